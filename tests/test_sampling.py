"""Who reads what under DDP: rank samplers, stream pieces per (rank, worker), resume offsets, streamed AR rows."""

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from onetok.ar_model.data import ARDataModule, StreamedSequences
from onetok.ar_model.sequence import T2I, SequenceBuilder, TextEncoder, fill_image_codes, i2t_example, t2i_example
from onetok.ar_model.system import ARSystem
from onetok.ar_model.tokenize import tokenize_dataset
from onetok.ar_model.vocab import ByteText, Vocab
from onetok.data.samplers import EvalSampler, RankSampler, ResumableLoader, stream_pieces, worker_batches, worker_skip
from onetok.data.shapes import write_shapes_dataset
from onetok.tokenizers import Tokenizer, preset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Shapes image shards (uneven shards: 16, 16, 8 train samples), a tiny tokenizer, token shards of the same
    layout."""
    root = tmp_path_factory.mktemp("sampling")
    write_shapes_dataset(root / "shapes", size=32, train=40, val=8, seed=5, shard_size=16)
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(root / "tok")
    tokenize_dataset(root / "tok", str(root / "shapes"), root / "tokens", batch_size=8, shard_size=16)
    return root


@pytest.mark.parametrize("size,world", [(10, 1), (10, 2), (11, 2), (9, 4)])
def test_rank_sampler_splits_disjoint_equal_shares(size, world):
    shares = []
    for rank in range(world):
        sampler = RankSampler(size, world, rank, seed=3)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler) == size // world  # equal batch counts on every rank
    flat = [i for share in shares for i in share]
    assert len(set(flat)) == len(flat) == world * (size // world)
    sampler = RankSampler(size, world, 0, seed=3)
    assert list(sampler) != shares[0] or size // world < 2  # another epoch, another permutation
    sampler.set_position(2, 2)
    assert list(sampler) == shares[0][2:]  # a resumed epoch continues where it stopped


def test_eval_sampler_covers_every_index_once():
    for size, world in [(10, 3), (7, 2), (1, 2)]:
        seen = [i for rank in range(world) for i in EvalSampler(size, world, rank)]
        assert sorted(seen) == list(range(size))


@pytest.mark.parametrize("counts,world,workers", [([16, 16, 8], 2, 2), ([5, 9, 3, 7], 3, 2), ([10], 1, 3)])
def test_stream_pieces_partition_the_epoch(counts, world, workers):
    for epoch in range(3):
        shares = {}
        for rank in range(world):
            for worker in range(workers):
                pieces = stream_pieces(counts, seed=1, epoch=epoch, rank=rank, world=world, worker=worker,
                                       workers=workers)
                shares[rank, worker] = [(p.shard, i) for p in pieces for i in range(p.begin, p.end)]
        samples = [s for share in shares.values() for s in share]
        assert len(set(samples)) == len(samples) == world * (sum(counts) // world)  # disjoint, all but the rest
        per_rank = [sum(len(shares[r, w]) for w in range(workers)) for r in range(world)]
        assert len(set(per_rank)) == 1


def test_worker_skip_matches_round_robin_loader():
    """The loader takes batches from workers in turn: count them the same way a real loader does."""
    counts = [5, 5, 4]
    order = [w for r in range(max(counts)) for w in range(len(counts)) if r < counts[w]]
    for k in range(sum(counts) + 1):
        assert worker_batches(counts, k) == [order[:k].count(w) for w in range(len(counts))]
    assert worker_skip([16, 16, 8], world=2, workers=2, worker=1, batch_size=2, skip_batches=3) == 2


def test_streamed_token_shards_every_sample_once_per_epoch(data):
    """Streamed token shards, 1 or 2 loader workers: every training sample at most once per epoch, all but the
    remainder of each worker's part, and the epoch's length is what the loader announces."""
    for workers, expected in ((0, 39), (2, 36)):  # 40 samples in batches of 3: 13 batches, or 2 x 6
        dm = ARDataModule(tokens=str(data / "tokens"), in_memory=False, batch_size=3, shuffle_buffer=5,
                          num_workers=workers, text="bytes")
        dm.setup("fit")
        loader = dm.train_dataloader()
        keys = [k for b in loader for k in b["key"]]
        assert len(keys) == len(set(keys)) == expected and len(loader) == expected // 3
        assert [k for b in loader for k in b["key"]] != keys  # the next epoch: another order


def test_streamed_token_folder_memory_does_not_grow_with_its_size(tmp_path):
    """in_memory=False: the token folder is streamed, never loaded; Python's peak allocation over setup and one epoch
    hardly moves when the token set grows 5x, while held in memory it grows with every sample."""
    import tracemalloc

    from onetok.bench.data_memory import write_token_folder

    def peak(samples: int, in_memory: bool) -> int:
        folder = tmp_path / f"tokens_{samples}"
        if not folder.exists():
            write_token_folder(folder, samples, tokens=16, codebook=4096, shard_size=100)
        tracemalloc.start()
        dm = ARDataModule(tokens=str(folder), text="bytes", in_memory=in_memory, batch_size=16, shuffle_buffer=50,
                          val_samples=0)
        dm.setup("fit")
        assert (dm.train_pairs is None) != in_memory
        for _ in dm.train_dataloader():
            pass
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    peak(200, False)  # one-time allocations (imports, caches) out of the way
    held = peak(1000, True) - peak(200, True)
    streamed = peak(1000, False) - peak(200, False)
    assert held > 800 * 200 and abs(streamed) < 0.1 * held  # held in memory: > 200 bytes a sample


def test_streamed_images_encoded_on_device_equal_pretokenized(data):
    """Image shards streamed raw: the loader ships uint8 images, ARSystem encodes them on its device and fills in
    the codes; the rows equal those streamed from token shards made by `onetok tokenize`."""
    images = ARDataModule(images=str(data / "shapes"), tokenizer=str(data / "tok"), in_memory=False, batch_size=4,
                          shuffle_buffer=3, text="bytes")
    tokens = ARDataModule(tokens=str(data / "tokens"), in_memory=False, batch_size=4, shuffle_buffer=3, text="bytes")
    for dm in (images, tokens):
        dm.setup("fit")
    system = ARSystem(preset="tiny", vocab=images.vocab.to_dict(), tokenizer_dir=str(data / "tok"))
    pairs = list(zip(images.train_dataloader(), tokens.train_dataloader()))
    assert len(pairs) == 10
    for from_images, from_tokens in pairs:
        assert from_images["image"].dtype == torch.uint8 and from_images["image"].shape == (4, 3, 16, 16)
        assert from_images["key"] == from_tokens["key"]
        filled = system.on_after_batch_transfer(from_images, 0)
        assert "image" not in filled
        assert torch.equal(filled["ids"], from_tokens["ids"]) and torch.equal(filled["targets"], from_tokens["targets"])


def test_fill_image_codes_rebuilds_rows():
    vocab = Vocab(10, ByteText())
    text, codes = vocab.encode_text("ab"), torch.tensor([[3, 1, 4], [1, 5, 9]])
    rows = [t2i_example(vocab, text, None, num_codes=3), i2t_example(vocab, text, None, num_codes=3)]
    from onetok.ar_model.sequence import collate_examples

    batch = fill_image_codes(collate_examples(rows, vocab.pad_id), codes, vocab)
    expected = collate_examples([t2i_example(vocab, text, codes[0].tolist()), i2t_example(vocab, text, codes[1].tolist())],
                                vocab.pad_id)
    assert torch.equal(batch["ids"], expected["ids"]) and torch.equal(batch["targets"], expected["targets"])
    assert batch["task"].tolist() == [T2I, 1]


def test_stream_replaces_a_corrupt_sample(data, tmp_path):
    """A sample that fails to decode is replaced by the previous good one: the rank keeps its share (DDP needs equal
    batch counts) and the failure is counted."""
    import shutil

    from onetok.data.shards import ShardWriter, iter_raw_samples

    src = data / "shapes" / "train" / "000000.tar"
    with ShardWriter(tmp_path / "bad", shard_size=100) as writer:
        for i, (key, files) in enumerate(iter_raw_samples(src)):
            writer.write(key, {**files, "png": b"not a png"} if i == 3 else files)
    shutil.copy(data / "tok" / "config.json", tmp_path / "config.json")
    vocab = Vocab(64, ByteText())
    builder, text = SequenceBuilder(vocab), TextEncoder(vocab)
    urls = [str(tmp_path / "bad" / "000000.tar")]
    stream = StreamedSequences(urls, [16], text, builder, codes=False, image_size=16, num_codes=8, batch_size=4,
                               shuffle_buffer=1)
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        rows = list(stream)
    keys = [r.key for r in rows]
    assert len(rows) == 16 and keys[3] == keys[2] and Counter(keys)[keys[2]] == 2


def test_resumable_loader_skips_trained_batches():
    """Without a trainer the loader counts its own epochs; a loaded state skips that epoch's trained batches."""
    data = list(range(12))
    sampler = RankSampler(len(data), seed=0)
    loader = ResumableLoader(data, batch_size=3, sampler=sampler)
    full = [b.tolist() for b in loader]
    resumed = ResumableLoader(data, batch_size=3, sampler=RankSampler(len(data), seed=0))
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    assert [b.tolist() for b in resumed] == full[2:]
    assert [b.tolist() for b in resumed] != full  # epoch 1: a new permutation, from its start
    random.seed(0)


def test_rank_world_reads_the_trainer():
    from types import SimpleNamespace

    from onetok.distributed import rank_world

    assert rank_world(None) == (0, 1)
    assert rank_world(SimpleNamespace(global_rank=2, world_size=3)) == (2, 3)
    assert rank_world(SimpleNamespace(global_rank=2, world_size=3)).world == 3
