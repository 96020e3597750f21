"""E2E as a task (data/task.py's interface), built from prepare.py: the official CSVs in the
paper's text (the default) or their own, the paper's decoding (beam search stops at a blank line
too, as its released decode), and Table 3's rows beside the scores."""

from data.e2e import prepare
from data.task import Task, size_of


class E2ETask(Task):
    name, label, unit = "e2e", "mr", "MR"
    FILES = tuple(prepare.SPLITS.values())  # the official release's CSVs
    blank_line_ends = True  # as the released decode script cuts outputs

    def __init__(self, data_dir: str | None = None, format: str = "paper"):
        prepare.check_format(format)
        self.data, self.format = data_dir, format
        self.suffix = "" if format == "paper" else f"-{format}"

    def locate(self) -> str:
        """The CSVs' folder, downloaded if need be."""
        return prepare.locate(self.data)

    def describe(self) -> str:
        return prepare.FORMATS[self.format]

    def examples(self, split: str) -> prepare.Examples:
        return prepare.load_examples(split, self.data, self.format)

    def where(self, split: str, i: int) -> str:
        return f"{prepare.SPLITS[split]}, row {i + 2}"  # (row 1: the header)

    def eval_groups(self, split: str):
        return prepare.eval_groups(split, self.data, self.format)

    def check_input(self, text: str, mr: bool = False):
        """An MR as the CSVs write it, 'name[The Eagle], eatType[pub]' (--mr), or a context as
        the model reads it, 'name : The Eagle | Type : pub' (--context)."""
        if mr:
            prepare.check_mr(text)
        else:
            super().check_input(text)

    def prompt(self, text: str, mr: bool = False) -> list[int]:
        self.check_input(text, mr)
        return prepare.prompt_tokens(text, self.format) if mr else super().prompt(text)

    def paper_size(self, config) -> str | None:
        """Table 3's GPT-2 size of this shape (by shape, so a local copy counts)."""
        return size_of(config)
