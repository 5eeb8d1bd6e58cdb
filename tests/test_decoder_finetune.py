"""Decoder-only fine-tuning (`TokenizerSystem(init_from=..., train_decoder_only=True)`): the run starts from a
tokenizer folder, the decoder learns, and every image keeps its ids (the encoder, quantizer and their BatchNorm
statistics stay frozen), so a unified model trained on those ids stays valid."""

import pytest
import torch

from onetok.tokenizers import Tokenizer
from onetok.tokenizers.model import preset
from onetok.tokenizers.system import TokenizerSystem


@pytest.fixture()
def start(tmp_path):
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=16, latent_batchnorm=True, token_drop="none")
    model = Tokenizer(cfg)
    model.train()
    model(torch.rand(8, 3, 16, 16))  # move the latent BatchNorm's running statistics off their initial values
    model.save_pretrained(tmp_path / "start")
    return tmp_path / "start", cfg.to_dict()


def _steps(system: TokenizerSystem, images: torch.Tensor, steps: int = 3) -> None:
    params = [p for p in system.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    system.train()
    for _ in range(steps):
        loss = (system.model(images).reconstruction - images).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("decoder_only", [True, False])
def test_decoder_only_keeps_every_id(start, decoder_only):
    folder, cfg = start
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = Tokenizer.from_pretrained(folder).eval()
    system = TokenizerSystem(preset=None, config=cfg, init_from=str(folder), train_decoder_only=decoder_only)
    assert torch.equal(system.model.eval().encode(images), before.encode(images))  # the start weights were loaded
    decoder_before = [p.detach().clone() for p in system.model.decoder.parameters()]
    _steps(system, images)
    system.model.eval()
    moved = any(not torch.equal(a, b) for a, b in zip(decoder_before, system.model.decoder.parameters()))
    assert moved  # the decoder learns either way
    same_ids = torch.equal(system.model.encode(images), before.encode(images))
    same_encoder = all(torch.equal(a, b) for a, b in zip(before.encoder.state_dict().values(),
                                                         system.model.encoder.state_dict().values()))
    assert same_ids == same_encoder == decoder_only  # frozen: nothing moves; trained: the encoder does


def test_start_folder_must_match_the_encoder(start):
    folder, cfg = start
    with pytest.raises(ValueError, match="encoder or quantizer does not match"):
        TokenizerSystem(preset=None, config={**cfg, "enc_width": cfg["enc_width"] * 2}, init_from=str(folder))
