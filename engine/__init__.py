"""The procedures the entry scripts run: search and retraining steps, evaluation, files of
genotypes and search checkpoints, pictures.

modeling/ reports an invalid genotype as its own GenotypeError (it imports nothing of utils/);
here, one layer up, that error joins the user errors the entry scripts print as one line.
"""
from modeling.genotypes import GenotypeError
from utils.errors import treat_as_user_error

treat_as_user_error(GenotypeError)
