"""Each sub-command's body, by name; imported after parsing, so `--help` and config errors stay instant."""

from freezeframe.compare import compare
from freezeframe.predict import predict, reregister
from freezeframe.rank import rank
from freezeframe.search import search
from freezeframe.train import pretrain, train

COMMANDS = {"train": train, "pretrain": pretrain, "compare": compare, "search": search, "rank": rank,
            "predict": predict, "reregister": reregister}
