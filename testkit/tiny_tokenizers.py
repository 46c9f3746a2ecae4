"""Real tokenizers of each family's kind with tiny vocabularies built here (no download): a CLIP
BPE, a BERT WordPiece and a SigLIP-style tokenizer with only an end token."""

from __future__ import annotations

from transformers import CLIPTokenizer

# The GPT-2/CLIP byte-to-unicode table (so any text tokenizes), as the OpenCLIP converter builds it.
from task.model.families.convert_openclip import byte_symbols


def make_tiny_tokenizer() -> CLIPTokenizer:
    chars = byte_symbols()
    vocab_list = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("o", "f</w>"), ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    merges += [("r", "i"), ("ri", "v"), ("riv", "e"), ("rive", "r</w>")]
    vocab_list += [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


# Words of the tiny WordPiece vocabularies: class names, prompt phrases, zero-shot templates.
_WORDS = [
    *("a", "an", "of", "the", "photo", "satellite", "aerial", "image", "remote", "sensing"),
    *("top", "down", "view", "river", "beach", "forest", "farm", "port", "baseball"),
    *("diamond", "mobile", "home", "park", "harbor"),
]


def _wordpiece_vocab(specials: list[str]) -> list[str]:
    """Specials, whole words, punctuation, and single characters (so any text tokenizes)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    return specials + _WORDS + list(".,-'") + chars + ["##" + c for c in chars]


def make_tiny_bert_tokenizer() -> object:
    from transformers import BertTokenizer

    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})


def make_tiny_siglip_tokenizer() -> object:
    """No start token, an end token appended, padding with <pad> (SigLIP's conventions)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _wordpiece_vocab(["<pad>", "</s>", "<unk>"])
    ids = {t: i for i, t in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", ids["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
