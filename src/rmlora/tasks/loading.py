"""Loading a task's pre-trained model and tokenizer: one-line errors and a quiet console.

- Tokenizers. A SentencePiece-only model folder (`spm.model` and no `tokenizer.json`, as
  microsoft/deberta-v3-base ships) is converted to a fast tokenizer by transformers only when the
  `sentencepiece` and `protobuf` packages are installed; without them transformers fails with an unrelated
  message about `tiktoken`. `load_tokenizer` names the missing packages and the extra that installs them.
- Weights. A task model has a new head (`classifier`, `qa_outputs`, DeBERTa's `pooler`) that the
  checkpoint does not hold; transformers prints a "LOAD REPORT" table for it on every run. When every
  missing or resized weight belongs to the head (outside `model.base_model_prefix`), that table is replaced
  by a one-line note; any other missing weight (e.g. a checkpoint without encoder weights) keeps the report.
"""

from __future__ import annotations

import importlib
import logging

from transformers import AutoTokenizer

from rmlora.errors import ConfigError

logger = logging.getLogger(__name__)

TOKENIZER_PACKAGES = ("sentencepiece", "google.protobuf")
_REPORT_LOGGER = "transformers.modeling_utils"  # where transformers' log_state_dict_report logs (modeling_utils.py)


def missing_packages(modules=TOKENIZER_PACKAGES) -> list[str]:
    """The pip names of the modules in `modules` that cannot be imported."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append("protobuf" if module.startswith("google") else module)
    return missing


def load_tokenizer(name: str, **kwargs):
    """AutoTokenizer.from_pretrained(name), with a one-line error when SentencePiece support is missing."""

    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except (ValueError, ImportError, OSError, AttributeError) as e:
        missing = missing_packages()
        # transformers' message when it cannot convert spm.model: "... sentencepiece or tiktoken installed ..."
        # (or, with protobuf missing, "`tiktoken` is required to read a `tiktoken` file")
        about_conversion = isinstance(e, ImportError) or any(
            w in str(e) for w in ("sentencepiece", "tiktoken", "protobuf")
        )
        if not missing or not about_conversion:
            raise
        raise ConfigError(
            f"cannot build the tokenizer of {name!r}: a SentencePiece tokenizer (spm.model, e.g. DeBERTa-v3) needs the "
            f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: pip install 'rmlora[harness]' "
            f"({type(e).__name__} from transformers)"
        ) from None


class _CaptureReport(logging.Filter):
    """Holds back transformers' LOAD REPORT record, to be re-emitted or replaced after the load."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True


def head_only(model, keys) -> bool:
    """Whether every key (a parameter name) lies outside the backbone, i.e. in the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        return False
    return all(not (k == prefix or k.startswith(prefix + ".")) for k in keys)


def from_pretrained_quietly(auto_class, name: str, **kwargs):
    """`auto_class.from_pretrained(name, **kwargs)` with the expected new-head report reduced to one line."""
    report_logger = logging.getLogger(_REPORT_LOGGER)
    capture = _CaptureReport()
    report_logger.addFilter(capture)
    try:
        model, info = auto_class.from_pretrained(name, output_loading_info=True, **kwargs)
    finally:
        report_logger.removeFilter(capture)
    new = set(info.get("missing_keys", ())) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())
    }
    if not capture.records:
        return model
    if new and head_only(model, new) and not info.get("error_msgs"):
        heads = sorted({k.rsplit(".", 1)[0] for k in new})
        logger.warning(
            "note: the task's new head (%s) starts from random weights, as it is not in %s; the rest is loaded",
            ", ".join(heads),
            name,
        )
    else:
        for record in capture.records:
            report_logger.handle(record)
    return model
