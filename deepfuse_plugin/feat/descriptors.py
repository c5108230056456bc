"""The ``descriptors`` modality: RDKit's 2D descriptors, with their cost bounded.

Two of RDKit's 217 descriptors, ``Ipc`` and ``AvgIpc``, each compute the characteristic polynomial
of the adjacency matrix by the Le Verrier-Faddeev method: one dense n x n matrix product per atom,
so O(n^4). Measured with ``time.perf_counter`` (all 217 descriptors of a polyamide chain, one call
each, on a shared 2-core machine):

=========== ============== ================== ====================
heavy atoms all 217 (s)    Ipc + AvgIpc (s)   next slowest (s)
=========== ============== ================== ====================
46          0.03           0.004              qed 0.005
134         0.65           0.47               MinEStateIndex 0.02
277         6.2            5.4                MaxAbsEStateIndex 0.14
=========== ============== ================== ====================

Both come from the same polynomial, so it is computed once per molecule here (the same RDKit
function on the same matrix: values bit-identical to calling the two descriptors), which halves the
dominant cost (same molecules, same busy machine: 14.0 s -> 6.9 s at 134 atoms, 35.4 s -> 19.2 s at
277); and molecules with more heavy atoms than ``InputLimits.max_descriptor_atoms`` get the
modality marked missing (with the reason) instead of computing it at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from rdkit import Chem

from deepfuse_plugin.feat.modality import ModalityFeaturizer
from deepfuse_plugin.limits import InputLimits
from deepfuse_plugin.modalities import Modality

#: Descriptors computed from one shared characteristic polynomial (see the module notes).
_IPC_DESCRIPTORS = ("Ipc", "AvgIpc")


class DescriptorsModality(ModalityFeaturizer):
    """RDKit 2D descriptors, non-finite values set to 0, squashed with ``sign(x) * log1p(|x|)``.

    The squashing needs no fitted statistics (so the featurizer stays stateless, as DeepChem's
    caching expects) and keeps descriptors of very different ranges (MolWt, Ipc) on one scale.
    Molecules with more heavy atoms than ``limits.max_descriptor_atoms`` get the modality missing
    (a few descriptors cost seconds to minutes there; see :mod:`deepfuse_plugin.feat.descriptors`).

    Examples
    --------
    >>> from rdkit import Chem
    >>> DescriptorsModality().compute(Chem.MolFromSmiles("CCO"), "CCO").shape
    (217,)
    """

    def __init__(self, name: str = "descriptors"):
        from rdkit.Chem import Descriptors

        self.name = name
        self._functions = list(Descriptors._descList)
        self.spec = Modality(
            name,
            "vector",
            dim=len(self._functions),
            params={"descriptors": [n for n, _ in self._functions]},
        )

    def input_problem(self, mol: Chem.Mol, limits: InputLimits) -> str | None:
        atoms = mol.GetNumHeavyAtoms()
        if atoms > limits.max_descriptor_atoms:
            return (
                f"{atoms} heavy atoms, over the limit of {limits.max_descriptor_atoms} for "
                "RDKit descriptors (InputLimits.max_descriptor_atoms)"
            )
        return None

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        values = np.empty(len(self._functions), dtype=np.float64)
        ipc = _SharedIpc(mol)
        for i, (name, fn) in enumerate(self._functions):
            function: Callable[[Chem.Mol], Any] = ipc.descriptor(name) or fn
            try:
                values[i] = function(mol)
            except Exception:  # RDKit raises on a few exotic molecules for single descriptors
                values[i] = np.nan
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32)


class _SharedIpc:
    """``Ipc`` and ``AvgIpc`` of one molecule from one characteristic polynomial.

    The same steps as ``rdkit.Chem.GraphDescriptors.Ipc`` (the distance matrix cached on the Mol as
    ``mol._adjMat``, which later descriptors such as ``BalabanJ`` read, then the polynomial of
    its entries equal to 1), so the values and the Mol's cached state are exactly RDKit's.
    """

    def __init__(self, mol: Chem.Mol):
        self.mol = mol
        self._polynomial: np.ndarray | None = None

    def descriptor(self, name: str) -> Callable[[Chem.Mol], float] | None:
        if name == "Ipc":
            return lambda mol: sum(self.polynomial()) * self._entropy()
        if name == "AvgIpc":
            return lambda mol: self._entropy()
        return None

    def polynomial(self) -> np.ndarray:
        if self._polynomial is None:
            from rdkit.Chem import Graphs

            try:
                distances = self.mol._adjMat
            except AttributeError:
                distances = Chem.GetDistanceMatrix(self.mol, False)
                self.mol._adjMat = distances
            self._polynomial = abs(
                Graphs.CharacteristicPolynomial(self.mol, np.equal(distances, 1))
            )
        return self._polynomial

    def _entropy(self) -> float:
        # the C implementation that GraphDescriptors' ``entropy.InfoEntropy`` resolves to
        from rdkit.ML.InfoTheory import rdInfoTheory

        return float(rdInfoTheory.InfoEntropy(self.polynomial()))
