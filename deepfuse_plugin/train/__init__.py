"""Training beyond one ``fit`` call: hyper-parameter search (:mod:`.hpopt`)."""
