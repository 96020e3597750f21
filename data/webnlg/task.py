"""WebNLG as a task (data/triples.py): the challenge's entries as the released code reads them,
decoded with Table 11's settings, scored on the unseen, seen and all categories beside Table 14."""

import glob
import os

from data.triples import TriplesTask
from data.webnlg import metrics, paper_results, prepare


class WebNLGTask(TriplesTask):
    name = "webnlg"
    prepare, metrics, paper_results = prepare, metrics, paper_results
    SUFFIXES = {"unseen": "_U", "seen": "_S", "all": "_A"}

    @classmethod
    def holds(cls, folder: str) -> bool:
        """Any of the released JSON files or the challenge's XML (prepare.locate then says what
        else it needs)."""
        return (any(os.path.isfile(os.path.join(folder, name)) for name in prepare.JSON_FILES)
                or os.path.isfile(os.path.join(folder, prepare.XML_TEST))
                or bool(glob.glob(os.path.join(folder, "*", "*triples", "*.xml"))))
