"""The interface of one molecular modality: :class:`ModalityFeaturizer`.

Kept apart from :mod:`deepfuse_plugin.feat.molecule` so modalities with more code of their own
(:mod:`deepfuse_plugin.feat.descriptors`) can live in their own module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from rdkit import Chem

from deepfuse_plugin.limits import InputLimits
from deepfuse_plugin.modalities import Modality


class ModalityFeaturizer(ABC):
    """Computes one modality from an RDKit ``Mol``; subclasses implement :meth:`compute` only."""

    name: str
    spec: Modality

    @abstractmethod
    def compute(self, mol: Chem.Mol, smiles: str) -> Any:
        """Value of the modality for one molecule. Raise to mark the modality missing.

        ``smiles`` is the canonical SMILES of ``mol`` (the key used by embedding tables).
        """

    def input_problem(self, mol: Chem.Mol, limits: InputLimits) -> str | None:
        """Why this modality must not be computed for ``mol`` (the modality is then missing with
        that reason, before :meth:`compute` runs), or ``None``. Override for modalities whose cost
        grows much faster than the molecule; the default accepts every molecule."""
        return None
