"""Import of the official PQGAN weights (pqgan.official): state dicts written in the official layout, built here
from the documented names and the taming/LDM shape rules (not from our model), with random values."""
import json

import pytest
import safetensors.torch
import torch

from pqgan import PQGAN, apply_overrides, load_config, load_official, load_pretrained
from pqgan.config import IMAGENET_MEAN, IMAGENET_STD
from pqgan.official import convert, convert_state_dict, main as convert_main

# A small config with every kind of key: distinct widths per level (so a wrong level order cannot fit), 1x1
# shortcuts, attention at one level, 4 subspaces of d=2, K=8.
TINY = ["model.resolution=32", "model.ch=8", "model.ch_mult=[1,2,4]", "model.num_res_blocks=1",
        "model.attn_resolutions=[16]", "model.z_channels=8", "model.embed_dim=8", "model.num_subspaces=4",
        "model.codebook_size=8"]


def tiny_config():
    return apply_overrides(load_config("tiny_f8_pq"), TINY)


def _conv(out_ch, in_ch, k):
    return {"weight": (out_ch, in_ch, k, k), "bias": (out_ch,)}


def _norm(ch):
    return {"weight": (ch,), "bias": (ch,)}


def _resblock(cin, cout):
    parts = {"norm1": _norm(cin), "conv1": _conv(cout, cin, 3), "norm2": _norm(cout), "conv2": _conv(cout, cout, 3)}
    if cin != cout:
        parts["nin_shortcut"] = _conv(cout, cin, 1)
    return parts


def _attn(ch):
    return {"norm": _norm(ch), "q": _conv(ch, ch, 1), "k": _conv(ch, ch, 1), "v": _conv(ch, ch, 1),
            "proj_out": _conv(ch, ch, 1)}


def official_shapes(m, codebook_alias="quantize"):
    """{name: shape} of the official VQModel checkpoint (autoencoder + quantiser + the unused extras) for our
    ModelConfig m, from the taming Encoder/Decoder construction rules: decoder.up.{i} finest-first,
    downsample/upsample submodules, per-subspace nn.Embedding(K, d) codebooks, VectorQuantizer2's (K, D) table."""
    shapes = {}

    def add(prefix, parts):
        for name, val in parts.items():
            if isinstance(val, dict):
                add(f"{prefix}.{name}", val)
            else:
                shapes[f"{prefix}.{name}"] = val

    ch, mult, nrb, L = m.ch, m.ch_mult, m.num_res_blocks, len(m.ch_mult)
    add("encoder.conv_in", _conv(ch, m.in_channels, 3))
    res, cin = m.resolution, ch
    for i in range(L):
        cout = ch * mult[i]
        for j in range(nrb):
            add(f"encoder.down.{i}.block.{j}", _resblock(cin, cout))
            cin = cout
            if res in m.attn_resolutions:
                add(f"encoder.down.{i}.attn.{j}", _attn(cout))
        if i != L - 1:
            add(f"encoder.down.{i}.downsample.conv", _conv(cin, cin, 3))
            res //= 2
    top = ch * mult[-1]
    for part in ("encoder.mid", "decoder.mid"):
        add(f"{part}.block_1", _resblock(top, top))
        add(f"{part}.attn_1", _attn(top))
        add(f"{part}.block_2", _resblock(top, top))
    add("encoder.norm_out", _norm(top))
    add("encoder.conv_out", _conv(m.z_channels, top, 3))
    add("decoder.conv_in", _conv(top, m.z_channels, 3))
    cin = top
    for i in reversed(range(L)):             # official numbering: up.{i} works at level i (0 = full resolution)
        cout = ch * mult[i]
        for j in range(nrb + 1):
            add(f"decoder.up.{i}.block.{j}", _resblock(cin, cout))
            cin = cout
            if res in m.attn_resolutions:
                add(f"decoder.up.{i}.attn.{j}", _attn(cout))
        if i != 0:
            add(f"decoder.up.{i}.upsample.conv", _conv(cout, cout, 3))
            res *= 2
    add("decoder.norm_out", _norm(ch * mult[0]))
    add("decoder.conv_out", _conv(m.out_channels, ch * mult[0], 3))
    add("quant_conv", _conv(m.embed_dim, m.z_channels, 1))
    add("post_quant_conv", _conv(m.z_channels, m.embed_dim, 1))
    K, D, S = m.codebook_size, m.embed_dim, m.num_subspaces
    for alias in (["quantize", "vq_split"] if codebook_alias == "both" else [codebook_alias]):
        for s in range(S):
            shapes[f"{alias}.embeddings.{s}.weight"] = (K, D // S)
        shapes[f"{alias}.embedding.weight"] = (K, D)
    shapes["vq_standard.embedding.weight"] = (K, D)
    shapes["loss.discriminator.main.0.weight"] = (64, 3, 4, 4)
    shapes["loss.perceptual_loss.lin0.model.1.weight"] = (1, 64, 1, 1)
    return shapes


def official_state_dict(m, codebook_alias="quantize", seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) * 0.2 for k, shape in official_shapes(m, codebook_alias).items()}
    if codebook_alias == "both":                          # one module under two names: identical values
        for s in range(m.num_subspaces):
            sd[f"vq_split.embeddings.{s}.weight"] = sd[f"quantize.embeddings.{s}.weight"].clone()
    return sd


def ours_from_official(sd, m):
    """The documented renaming, done by hand: what a model 'loaded the normal way' gets."""
    L, out = len(m.ch_mult), {}
    for k, v in sd.items():
        if k.startswith(("loss.", "vq_standard.")) or k.endswith(".embedding.weight") or ".embeddings." in k:
            continue
        k = k.replace(".downsample.", ".sample.").replace(".upsample.", ".sample.")
        if k.startswith("decoder.up."):
            level, rest = k[len("decoder.up."):].split(".", 1)
            k = f"decoder.up.{L - 1 - int(level)}.{rest}"
        out[k] = v
    prefix = "quantize" if "quantize.embeddings.0.weight" in sd else "vq_split"
    out["quantizer.codebooks"] = torch.stack([sd[f"{prefix}.embeddings.{s}.weight"]
                                              for s in range(m.num_subspaces)])
    return out


def write(tmp_path, sd, name="official.safetensors"):
    path = tmp_path / name
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def images(seed=1, n=2, side=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, side, side, generator=g) * 2 - 1).to(dtype)


@pytest.mark.parametrize("alias", ["quantize", "vq_split", "both"])
def test_official_layout_loads_and_matches_a_normally_loaded_model(tmp_path, alias):
    cfg = tiny_config()
    sd = official_state_dict(cfg.model, alias)
    model = load_official(write(tmp_path, sd), config=cfg)
    assert model.config.norm_mean == IMAGENET_MEAN and model.config.norm_std == IMAGENET_STD
    m = apply_overrides(cfg, [f"model.norm_mean={list(IMAGENET_MEAN)}", f"model.norm_std={list(IMAGENET_STD)}"])
    reference = PQGAN(m.model).eval()
    missing, unexpected = reference.load_state_dict(ours_from_official(sd, cfg.model), strict=False)
    # (scaling_factor and quantizer.usage_steps are filled in by their load hooks when absent)
    assert not unexpected and set(missing) == {"quantizer.cluster_size", "quantizer.initted"}
    x = images()
    with torch.no_grad():
        got, q_got = model(x)
        want, q_want = reference(x)
    assert torch.equal(q_got.indices, q_want.indices)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the imported networks really work in ImageNet-normalised space: the decoder's raw output, un-normalised
    with torch.no_grad():
        raw = reference.decoder(reference.post_quant_conv(q_want.quantized))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (raw * std + mean) * 2 - 1)


def test_official_decoder_levels_are_reversed(tmp_path):
    """Official decoder.up.0 (full resolution, ch*ch_mult[0] wide) is our last decoder stage."""
    cfg = tiny_config()
    sd = official_state_dict(cfg.model)
    model = load_official(write(tmp_path, sd), config=cfg)
    assert torch.equal(model.decoder.up[-1].block[0].conv1.weight, sd["decoder.up.0.block.0.conv1.weight"])
    assert torch.equal(model.decoder.up[0].sample.conv.weight, sd["decoder.up.2.upsample.conv.weight"])
    assert torch.equal(model.encoder.down[0].sample.conv.weight, sd["encoder.down.0.downsample.conv.weight"])
    cb = torch.stack([sd[f"quantize.embeddings.{s}.weight"] for s in range(4)])
    assert torch.equal(model.quantizer.codebooks.detach(), cb)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"encoder.extra.weight": torch.zeros(1)}), "encoder.extra.weight"),
    (lambda sd: sd.pop("decoder.up.1.upsample.conv.bias"), "decoder.up.1.upsample.conv.bias"),
    (lambda sd: [sd.pop(f"{a}.embeddings.2.weight") for a in ("quantize", "vq_split")],
     "quantize.embeddings.2.weight"),
    (lambda sd: sd.update({"quant_conv.weight": torch.zeros(8, 8, 3, 3)}), "quant_conv.weight"),
    (lambda sd: sd.update({"quantize.embeddings.1.weight": torch.zeros(8, 3)}), "quantize.embeddings.1.weight"),
    (lambda sd: sd.update({"vq_split.embeddings.0.weight": torch.zeros(8, 2)}), "vq_split.embeddings.0.weight"),
])
def test_bad_official_state_dicts_name_the_key(tmp_path, edit, message):
    cfg = tiny_config()
    sd = official_state_dict(cfg.model, "both")
    edit(sd)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_official(write(tmp_path, sd), config=cfg)


def test_wrong_config_is_a_shape_error(tmp_path):
    cfg = tiny_config()
    path = write(tmp_path, official_state_dict(cfg.model))
    with pytest.raises(ValueError, match="shape"):
        load_official(path, config=apply_overrides(cfg, ["model.ch=16"]))


def test_convert_cli_writes_a_checkpoint_that_loads_and_evaluates(tmp_path):
    cfg = tiny_config()
    sd = official_state_dict(cfg.model, "vq_split")
    weights = write(tmp_path, sd)
    cfg_path = tmp_path / "ours.yaml"
    cfg_path.write_text(cfg.to_yaml())
    out = tmp_path / "ckpt"
    assert convert_main([str(weights), "--out", str(out), "--config", str(cfg_path)]) == 0
    model = load_pretrained(str(out))
    direct = load_official(weights, config=cfg)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], direct(x)[0], rtol=0, atol=0)
    state = json.loads((out / "state.json").read_text())
    assert state["imported_from"].endswith("official.safetensors") and len(state["imported_sha256"]) == 64
    with pytest.raises(FileExistsError, match="already holds"):
        convert(weights, out, cfg)


def test_official_yaml_config(tmp_path):
    """An official Lightning config (model.init_args: ddconfig, n_embed, embed_dim, num_spaces) sets the model."""
    cfg = tiny_config()
    m = cfg.model
    official_yaml = {"model": {"class_path": "vv.models.latent_diffusion_copy.VQModel", "init_args": {
        "learning_rate": 4.5e-6, "n_embed": m.codebook_size, "embed_dim": m.embed_dim, "num_spaces": m.num_subspaces,
        "split_quantizer": True, "distance_type": "l2",
        "ddconfig": {"double_z": False, "z_channels": m.z_channels, "resolution": m.resolution, "in_channels": 3,
                     "out_ch": 3, "ch": m.ch, "ch_mult": list(m.ch_mult), "num_res_blocks": m.num_res_blocks,
                     "attn_resolutions": list(m.attn_resolutions), "dropout": 0.0}}}}
    import yaml
    weights = write(tmp_path, official_state_dict(m), "mine.safetensors")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(official_yaml))
    model = load_official(weights)                       # the .yaml beside the weights
    assert model.config.num_subspaces == 4 and model.config.norm_mean == IMAGENET_MEAN
    assert model.config.ch_mult == (1, 2, 4)


def test_float64_forward_and_normalised_round_trip():
    cfg = apply_overrides(tiny_config(), [f"model.norm_mean={list(IMAGENET_MEAN)}",
                                          f"model.norm_std={list(IMAGENET_STD)}"])
    torch.manual_seed(0)
    model = PQGAN(cfg.model).double().eval()
    x = images(dtype=torch.float64)
    recon, q = model(x)
    assert recon.dtype == torch.float64 and q.quantized.dtype == torch.float64
    torch.testing.assert_close(model.from_network(model.to_network(x)), x)
    assert model.decode_indices(model.encode(x)).dtype == torch.float64
    # float64 and float32 agree to float32 precision on the same weights
    m32 = PQGAN(cfg.model).eval()
    m32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    r32, q32 = m32(x.float())
    assert torch.equal(q32.indices, q.indices)
    torch.testing.assert_close(r32.double(), recon, atol=1e-4, rtol=1e-4)


def test_pqgan_eval_runs_on_a_converted_checkpoint(tmp_path):
    """pqgan-eval DIR on a pqgan-convert output: the official protocol (--resize, whole folder)."""
    import numpy as np
    from PIL import Image
    from pqgan.evaluate import run
    cfg = tiny_config()
    out = tmp_path / "ckpt"
    convert(write(tmp_path, official_state_dict(cfg.model)), out, cfg)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    m = run([str(out), "--data", str(photos), "--split", "all", "--resize", "32x32", "--no-fid", "--perceptual",
             "none", "--no-official-lpips", "--out", str(tmp_path / "eval")])
    assert m["num_images"] == 3 and m["image_size"] == [32, 32] and m["codebook_size"] == 8
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["psnr_pooled_db"] == m["psnr_pooled_db"]
