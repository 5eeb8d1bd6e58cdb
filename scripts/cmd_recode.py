"""`onetok recode`: rewrite an `.otok` file's ids with the portable entropy coder (payload 2), losslessly.

Files written by the float coder of onetok <= 0.1 (payload 1) decode only on the kind of machine that wrote them
(docs/format.md). Run on such a machine, `onetok recode OLD.otok -o NEW.otok` decodes the ids and range-codes the
very same ids again with the integer prior, whose probabilities are the same bits everywhere: NEW.otok decodes to the
same ids, hence the same pixels, on every machine. A bit-packed file is range-coded the same way (smaller). The
output is checked by decoding it again before it is written (atomically); it never replaces the input, and replaces
another file only with --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onetok.fileio import UserError, atomic_write_bytes, check_writable, file_ids
from onetok.scripts.devices import add_threads_arg, check_threads, use_threads


def recode(source, prior, f):
    """The TiledFile `f` (decoded with the Codec `source`) with every image's ids range-coded by the portable coder
    under `prior`; OtokError when `f` does not decode here or the result does not decode to the same ids."""
    from onetok.tokenizers.codec import entropy
    from onetok.tokenizers.codec import format as otok
    from onetok.tokenizers.registry import fingerprint

    decoded = [source.ids(f, im) for im in f.images]
    coded = tuple(entropy.code_image(prior, im, f.tile_size) for im in decoded)
    out = otok.TiledFile(f.fingerprint, f.codebook_size, f.tile_size, f.max_tokens, coded, fingerprint(prior))
    for im in coded:  # decoded again: the checksum of the original ids must come out (else OtokError)
        rows, cols = im.grid(f.tile_size)
        entropy.decode(prior, rows, cols, im.words, im.uniform_k, im.checksum)
    return out


def _prior_for(codecs, src: Path, f, given: str | None):
    """The prior to recode with: the file's own (payload 1 or 2), else --prior, else the one beside its tokenizer."""
    from onetok.scripts.cmd_codec import load_prior
    from onetok.tokenizers import registry

    codec = codecs.for_file(src, f)
    if codec.prior is not None:
        return codec, codec.prior
    folder = registry.find_tokenizer(f.fingerprint.hex(), [codecs.tokenizer_dir])
    prior_dir = given or (registry.prior_beside(folder) if folder is not None else None)
    if prior_dir is None:
        raise UserError(f"{src}: bit-packed, and its tokenizer has no prior beside it; pass --prior DIR")
    return codec, load_prior(prior_dir)


def cmd_recode(args: argparse.Namespace) -> int:
    from onetok.scripts.cmd_codec import Codecs, read_otok

    check_threads(args)
    src, out = Path(args.input), Path(args.out)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if out.suffix.lower() != ".otok":
        raise UserError(f"{out}: recode writes one .otok file: name the output *.otok")
    check_writable(out, args.force, file_ids([src]))
    f = read_otok(src, None)
    from onetok.tokenizers.codec import format as otok

    if not isinstance(f, otok.TiledFile):
        raise UserError(f"{src}: a version-1 file holds bit-packed ids, which decode on every machine: nothing to "
                        "recode")
    codec, prior = _prior_for(Codecs(args.tokenizer, args.prior), src, f, args.prior)
    use_threads(args.threads)
    try:
        data = otok.dumps(recode(codec, prior, f))
    except otok.OtokError as err:
        raise UserError(f"{src}: {err}") from None
    atomic_write_bytes(out, data, args.force)
    print(f"recoded {f.num_images} image(s), payload {f.payload} -> portable entropy coder: "
          f"{src.stat().st_size:,} -> {len(data):,} bytes -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recode", help="rewrite an .otok file's ids with the portable entropy coder (lossless)",
                       description="Decode an .otok file's ids and range-code the same ids with the portable "
                                   "coder, which decodes on every machine. Run it where the file decodes (for a "
                                   "file of onetok <= 0.1's float coder: the kind of machine that wrote it).")
    p.add_argument("input", metavar="INPUT", help="the .otok file")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="the new .otok file (never the input)")
    p.add_argument("--tokenizer", metavar="DIR", help="the tokenizer the file was made with (default: found by "
                                                      "fingerprint)")
    p.add_argument("--prior", metavar="DIR", help="the prior (default: the file's, found by fingerprint, or the one "
                                                  "beside its tokenizer)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (never the input)")
    add_threads_arg(p)
    p.set_defaults(func=cmd_recode)
