"""DART as a task (data/triples.py): its entries as the released code reads them, decoded with
Table 11's settings, scored beside Table 13; trained with Table 11's DART column."""

from data.dart import metrics, paper_results, prepare
from data.triples import TriplesTask


class DartTask(TriplesTask):
    name = "dart"
    prepare, metrics, paper_results = prepare, metrics, paper_results
    recipe = {"weight_decay": 0.0, "lora_dropout": 0.0, "label_smoothing": 0.0}  # Table 11

    @classmethod
    def holds(cls, folder: str) -> bool:
        return any(prepare.path(folder, split) for split in prepare.SPLITS)
