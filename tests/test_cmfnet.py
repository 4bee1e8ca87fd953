"""CmFNet: network shapes and options, parameter counts, the hybrid-supervision plugin and its cards."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cmfnet.errors import InputError
from cmfnet.training.cards import card_path_for_id, load_card, method_ids
from cmfnet.training.losses.crf import multiview_crf_loss
from cmfnet.training.contract import Batch, StepInfo
from cmfnet.training.plugins import load_method
from cmfnet.training.networks import build_network, count_parameters
from cmfnet.training.networks.cmfnet import CmFNet

METHODS = Path(__file__).resolve().parents[1] / "methods"
CONVS = (3, 4, 5, 6)
#: Table IV's "Params" column for CTn / MRn
PAPER_PARAMS_M = {3: 7.94, 4: 19.57, 5: 35.57, 6: 51.56}


# -- parameter counts written out from the layer definitions ------------------------------------
def conv(kernel: int, c_in: int, c_out: int) -> int:
    return kernel ** 3 * c_in * c_out + c_out  # weights + bias


def conv_block(c_in: int, c_out: int) -> int:
    return conv(3, c_in, c_out) + 2 * c_out  # 3x3x3 conv + BatchNorm (ReLU has no parameters)


def resample(c_in: int, c_out: int) -> int:
    return conv(2, c_in, c_out) + 2 * c_out  # stride-2 (transposed) conv + BatchNorm


def vnet_params(in_ch: int, classes: int, width: int, n_convs: int, downsamplings: int) -> int:
    """One V-Net with ``n_convs`` convolutions in every encoder and decoder stage."""
    w = [width * 2 ** i for i in range(downsamplings + 1)]
    encoder = sum(conv_block(in_ch if i == 0 else w[i], w[i]) + (n_convs - 1) * conv_block(w[i], w[i])
                  for i in range(downsamplings + 1))
    downs = sum(resample(w[i], w[i + 1]) for i in range(downsamplings))
    ups = sum(resample(w[i + 1], w[i]) for i in range(downsamplings))
    decoder = sum(n_convs * conv_block(w[i], w[i]) for i in range(downsamplings))
    return encoder + downs + ups + decoder + conv(1, w[0], classes)


def cmfnet_params(classes: int, width: int, ct: int, mr: int, mm_convs: int = 3, cfe: bool = True,
                  cff: bool = True) -> int:
    total = vnet_params(1, classes, width, ct, min(ct, 4)) + vnet_params(1, classes, width, mr, min(mr, 4))
    if not cfe:
        return total
    w = [width * 2 ** i for i in range(5)]
    fusion = sum(conv(3, 2 * w[s], w[s]) + w[s] for s in ((1, 2, 3) if cff else (3,)))  # conv + PReLU
    enhancement = conv(2, w[3], w[4]) + w[4] + 3 * conv_block(w[4], w[4])  # DownConv + PReLU, 3 modules
    decoder = sum(resample(w[i + 1], w[i]) + mm_convs * conv_block(w[i], w[i]) for i in range(4))
    return total + fusion + enhancement + decoder + conv(1, w[0], classes)


def test_single_branch_parameter_counts_at_the_paper_width_follow_the_formula() -> None:
    print("\nTable IV variant  ours (M)  paper (M)")
    for n in CONVS:
        model = build_network({"arch": "vnet", "width": 16, "n_convs": n, "downsamplings": min(n, 4)}, 1, 2)
        ours = count_parameters(model)
        assert ours == vnet_params(1, 2, 16, n, min(n, 4))
        print(f"CT{n}/MR{n}          {ours / 1e6:8.2f}  {PAPER_PARAMS_M[n]:9.2f}")


@pytest.mark.parametrize("ct, mr, cfe, cff", [(3, 4, True, True), (6, 3, True, False), (3, 4, False, False)])
def test_cmfnet_parameter_count_follows_the_formula(ct: int, mr: int, cfe: bool, cff: bool) -> None:
    model = CmFNet(2, 2, width=16, ct_convs=ct, mr_convs=mr, cfe=cfe, cff=cff)
    assert count_parameters(model) == cmfnet_params(2, 16, ct, mr, cfe=cfe, cff=cff)


# -- network -------------------------------------------------------------------------------------
def test_all_sixteen_branch_combinations_give_full_size_logits() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 2, 16, 16, 16)
    for ct, mr in itertools.product(CONVS, CONVS):
        model = build_network({"arch": "cmfnet", "width": 2, "ct_convs": ct, "mr_convs": mr}, 2, 3)
        assert model.size_divisor == 16
        assert len(model.ct.encoder.stages) == min(ct, 4) + 1 and len(model.mr.encoder.stages) == min(mr, 4) + 1
        assert all(len(stage) == 3 * ct for stage in model.ct.encoder.stages)  # conv, norm, act per conv
        out = model(x)
        assert set(out) == {"y_ct", "y_mr", "y_mm"}
        for name, y in out.items():
            assert y.shape == (2, 3, 16, 16, 16), (ct, mr, name)


def test_one_channel_input_feeds_both_branches() -> None:
    torch.manual_seed(0)
    model = CmFNet(1, 2, width=2, ct_convs=4, mr_convs=4).eval()
    model.mr.load_state_dict(model.ct.state_dict())  # identical branches: identical outputs expected
    ct_only = torch.randn(1, 1, 16, 16, 16)
    out = model(ct_only)
    torch.testing.assert_close(out["y_ct"], out["y_mr"])
    both = model(torch.cat([ct_only, ct_only], dim=1))
    for name in out:
        torch.testing.assert_close(out[name], both[name])


def test_mfl_has_no_cross_modal_branch_and_predicts_with_the_ct_branch() -> None:
    model = CmFNet(2, 2, width=2, cfe=False, cff=False).eval()
    out = model(torch.randn(1, 2, 16, 16, 16))
    assert out["y_mm"] is out["y_ct"]
    assert not hasattr(model, "cfe") and len(model.fuse) == 0
    assert model.size_divisor == 16  # the MR4 branch


def test_cfe_without_cff_fuses_only_stage_three_and_decodes_without_skips() -> None:
    model = CmFNet(2, 2, width=2, cfe=True, cff=False)
    assert sorted(model.fuse) == ["3"] and model.skip_stages == ()
    full = CmFNet(2, 2, width=2)
    assert sorted(full.fuse) == ["1", "2", "3"] and full.skip_stages == (1, 2, 3)


@pytest.mark.parametrize("options, message", [({"cfe": False, "cff": True}, "cff=True needs cfe"),
                                              ({"ct_downsamplings": 2}, "at least 3 downsamplings")])
def test_inconsistent_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CmFNet(2, 2, width=2, **options)


def test_three_channel_input_is_refused() -> None:
    with pytest.raises(ValueError, match="input channels"):
        CmFNet(3, 2, width=2)


# -- the hybrid-supervision plugin ---------------------------------------------------------------
def tiny_method(*overrides: str, card: str = "cmfnet.yaml"):  # noqa: ANN201 - a Method
    return load_method(load_card(METHODS / card, ["network.width=2", *overrides]))


SPACING = (3.0, 1.25, 1.25)


def scribble_batch(channels: int = 2, seed: int = 0,
                   spacing: list[tuple[float, float, float]] | None = None) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, channels, 16, 16, 16, generator=generator)
    target = torch.full((2, 16, 16, 16), 255, dtype=torch.long)
    target[:, 8, 8, 2:14] = 1
    target[:, 8, 1, 2:14] = 0
    return Batch(image=image, target=target, case_ids=["a", "b"], boxes=[(slice(0, 16),) * 3] * 2,
                 spacing=[SPACING] * 2 if spacing is None else spacing)


def sample(batch: Batch, i: int) -> Batch:
    """Sample ``i`` of a batch as a batch of one."""
    return Batch(image=batch.image[i:i + 1], target=batch.target[i:i + 1], case_ids=[batch.case_ids[i]],
                 boxes=[batch.boxes[i]], spacing=[batch.spacing[i]])


STEP = StepInfo(0, 10)


def gradients(model: torch.nn.Module, part: str) -> dict[str, float]:
    """Largest |grad| in each of the network's parts (ct, mr, the cross-modal modules)."""
    out: dict[str, float] = {}
    for name, param in model.named_parameters():
        if name.startswith(part):
            out[name] = 0.0 if param.grad is None else float(param.grad.abs().max())
    return out


@pytest.mark.parametrize("term, overrides", [
    ("ssl", ["params.use_imr=false", "params.use_imc=false"]),
    ("imr_ct", ["params.use_ssl=false", "params.use_imc=false", "params.lambda_mr=0"]),
    ("imr_mr", ["params.use_ssl=false", "params.use_imc=false", "params.lambda_ct=0"]),
    ("imc", ["params.use_ssl=false", "params.use_imr=false"]),
])
def test_each_loss_term_alone_trains_the_network(term: str, overrides: list[str]) -> None:
    torch.manual_seed(0)
    method = tiny_method(*overrides)
    model = method.build_network(2, 2)
    loss, parts = method.loss(model, scribble_batch(), STEP)
    assert set(parts) == {term}
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    branch_grads = max(gradients(model, "ct.").values()) + max(gradients(model, "mr.").values())
    cross_modal_grads = max(gradients(model, "mm_decoder.").values())
    assert branch_grads > 0
    if term == "imc":  # y_mm is the detached reference: only the modality branches learn from it
        assert cross_modal_grads == 0
    else:
        assert cross_modal_grads > 0


def test_default_loss_is_the_sum_of_its_parts_with_the_papers_weights() -> None:
    method = tiny_method()
    assert {k: method.params[k] for k in ("lambda_ct", "lambda_mr", "alpha1", "alpha2")} == \
        {"lambda_ct": 0.2, "lambda_mr": 0.2, "alpha1": 0.8, "alpha2": 0.8}


def test_loss_terms_recomputed_from_the_heads_sum_to_the_loss() -> None:
    """Every term from the network's heads and the batch, independently of the plugin: L_imr puts
    channel 0 (CT) into the CT term and channel 1 (MR) into the MR term, each times its own lambda."""
    torch.manual_seed(0)
    lambda_ct, lambda_mr, alpha1, alpha2 = 0.3, 0.7, 0.4, 0.9
    method = tiny_method(f"params.lambda_ct={lambda_ct}", f"params.lambda_mr={lambda_mr}",
                         f"params.alpha1={alpha1}", f"params.alpha2={alpha2}")
    model = method.build_network(2, 2).eval()  # no dropout: the plugin's forward and ours agree
    batch = scribble_batch()
    batch.image[:, 1] = 3 * batch.image[:, 1].sign()  # MR: two sharp intensity levels, unlike CT
    loss, parts = method.loss(model, batch, STEP)
    p = method.params
    with torch.no_grad():
        out = model(batch.image)
        probs = {k: torch.softmax(v, 1) for k, v in out.items()}

        def crf(channel: int) -> float:
            return float(multiview_crf_loss(out["y_mm"], batch.image[:, [channel]], batch.spacing,
                                            p["crf_downsample"], p["crf_radius"], p["crf_sigma_xy_mm"],
                                            p["crf_sigma_intensity"])[0])

    expected = {
        "ssl": sum(F.cross_entropy(y, batch.target, ignore_index=255).item() for y in out.values()),
        "imr_ct": lambda_ct * crf(0),
        "imr_mr": lambda_mr * crf(1),
        "imc": alpha1 * F.mse_loss(probs["y_ct"], probs["y_mm"]).item()
        + alpha2 * F.mse_loss(probs["y_mr"], probs["y_mm"]).item(),
    }
    assert crf(0) != pytest.approx(crf(1), rel=1e-2)  # a channel swap must show
    assert parts == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-5)


@pytest.mark.parametrize("term", ["lambda_ct", "lambda_mr"])
def test_each_lambda_scales_its_crf_term(term: str) -> None:
    """Fig. 6's lambda sweep: doubling one lambda doubles its term and leaves the other alone."""
    torch.manual_seed(0)
    name = "imr_ct" if term == "lambda_ct" else "imr_mr"
    other = "imr_mr" if term == "lambda_ct" else "imr_ct"
    off = ["params.use_ssl=false", "params.use_imc=false"]
    single = tiny_method(*off, f"params.{term}=0.1")
    double = tiny_method(*off, f"params.{term}=0.2")
    model = single.build_network(2, 2).eval()
    _, one = single.loss(model, scribble_batch(), STEP)
    _, two = double.loss(model, scribble_batch(), STEP)
    assert two[name] == pytest.approx(2 * one[name], rel=1e-5)
    assert two[other] == pytest.approx(one[other], rel=1e-5)


def test_one_channel_input_uses_ct_for_both_crf_terms() -> None:
    torch.manual_seed(0)
    method = tiny_method("params.use_ssl=false", "params.use_imc=false")
    _, parts = method.loss(method.build_network(1, 2), scribble_batch(channels=1), STEP)
    assert parts["imr_ct"] == pytest.approx(parts["imr_mr"])


def test_imc_is_eq8_on_softmax_probabilities() -> None:
    torch.manual_seed(0)
    method = tiny_method("params.use_ssl=false", "params.use_imr=false", "params.alpha1=0.3",
                         "params.alpha2=0.6")
    model = method.build_network(2, 2).eval()  # no dropout: two forwards agree
    batch = scribble_batch()
    _, parts = method.loss(model, batch, STEP)
    with torch.no_grad():
        p = {k: torch.softmax(v, 1) for k, v in model(batch.image).items()}
    expected = 0.3 * ((p["y_mm"] - p["y_ct"]) ** 2).mean() + 0.6 * ((p["y_mm"] - p["y_mr"]) ** 2).mean()
    assert parts["imc"] == pytest.approx(expected.item(), rel=1e-5)


def test_mfl_trains_both_branches_with_ssl_and_mutual_consistency_and_skips_imr() -> None:
    torch.manual_seed(0)
    method = tiny_method("network.cfe=false", "network.cff=false")
    model = method.build_network(2, 2).eval()
    batch = scribble_batch()
    _, parts = method.loss(model, batch, STEP)
    assert set(parts) == {"ssl", "imc"}
    with torch.no_grad():
        out = model(batch.image)
        p_ct, p_mr = torch.softmax(out["y_ct"], 1), torch.softmax(out["y_mr"], 1)
    expected_ssl = sum(F.cross_entropy(out[k], batch.target, ignore_index=255).item() for k in ("y_ct", "y_mr"))
    assert parts["ssl"] == pytest.approx(expected_ssl, rel=1e-5)
    assert parts["imc"] == pytest.approx(0.8 * ((p_ct - p_mr) ** 2).mean().item(), rel=1e-5)


def test_mask_supervision_makes_ssl_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    method = tiny_method("params.use_imr=false", "params.use_imc=false", card="cmfnet_fullmask.yaml")
    assert method.card.supervision == "mask"
    model = method.build_network(2, 2).eval()
    batch = scribble_batch()
    batch.target = torch.randint(0, 2, batch.target.shape, generator=torch.Generator().manual_seed(1))
    _, parts = method.loss(model, batch, STEP)
    with torch.no_grad():
        expected = sum(F.cross_entropy(y, batch.target).item() for y in model(batch.image).values())
    assert parts["ssl"] == pytest.approx(expected, rel=1e-5)


def test_plain_vnet_gets_pce_and_optional_crf() -> None:
    torch.manual_seed(0)
    method = load_method(load_card(METHODS / "table4.yaml", variant="ct3"))
    model = method.build_network(1, 2)
    batch = scribble_batch(channels=1)
    loss, parts = method.loss(model, batch, STEP)
    assert set(parts) == {"ssl"}
    with_crf = load_method(load_card(METHODS / "table4.yaml", ["params.use_imr=true"], variant="mr3"))
    _, parts = with_crf.loss(model, batch, STEP)
    assert set(parts) == {"ssl", "imr_ct", "imr_mr"}


def test_logits_return_the_requested_head() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16, 16)
    for output in ("mm", "ct", "mr"):
        method = tiny_method(f"params.output={output}")
        model = method.build_network(2, 2).eval()
        torch.testing.assert_close(method.logits(model, x), model(x)[f"y_{output}"])
    vnet_method = load_method(load_card(METHODS / "table4.yaml", ["params.output=ct"], variant="ct3"))
    with pytest.raises(ValueError, match="single output"):
        vnet_method.logits(vnet_method.build_network(1, 2).eval(), x[:, :1])


def test_crf_uses_the_batch_spacing_in_mm() -> None:
    """The CRF reads each patch's spacing from Batch.spacing: the same voxels at another spacing give
    another loss, and the loss is the CRF of the batch's own spacing."""
    torch.manual_seed(0)
    method = tiny_method("params.use_ssl=false", "params.use_imc=false")
    model = method.build_network(2, 2).eval()
    p = method.params
    fine = scribble_batch(spacing=[(1.0, 1.0, 1.0)] * 2)
    _, at_header = method.loss(model, scribble_batch(), STEP)
    _, at_fine = method.loss(model, fine, STEP)
    with torch.no_grad():
        y_mm = model(fine.image)["y_mm"]
        expected = multiview_crf_loss(y_mm, fine.image, [SPACING] * 2, p["crf_downsample"], p["crf_radius"],
                                      p["crf_sigma_xy_mm"], p["crf_sigma_intensity"])
    assert at_header["imr_ct"] == pytest.approx(p["lambda_ct"] * float(expected[0]), rel=1e-5)
    assert at_header["imr_mr"] == pytest.approx(p["lambda_mr"] * float(expected[1]), rel=1e-5)
    # closer voxels in mm weigh more in the Gaussian kernel: a finer grid gives a larger pairwise term
    assert at_fine["imr_ct"] > 1.05 * at_header["imr_ct"]
    assert at_fine["imr_mr"] > 1.05 * at_header["imr_mr"]


def test_two_spacings_in_one_batch_give_the_per_sample_result() -> None:
    """A batch of patches from cases with different headers: each sample's CRF uses its own spacing,
    so the batch's term is the mean of the samples' terms, each at its spacing."""
    torch.manual_seed(0)
    method = tiny_method("params.use_ssl=false", "params.use_imc=false")
    model = method.build_network(2, 2).eval()  # no dropout, BatchNorm per sample: samples independent
    mixed = scribble_batch(spacing=[SPACING, (1.0, 0.6, 0.6)])
    _, together = method.loss(model, mixed, STEP)
    alone = [method.loss(model, sample(mixed, i), STEP)[1] for i in range(2)]
    _, first_for_both = method.loss(model, scribble_batch(spacing=[SPACING] * 2), STEP)
    for term in ("imr_ct", "imr_mr"):
        assert together[term] == pytest.approx(0.5 * (alone[0][term] + alone[1][term]), rel=1e-5)
        assert together[term] != pytest.approx(first_for_both[term], rel=1e-2), "sample 1's own spacing counts"
        assert alone[0][term] != pytest.approx(alone[1][term], rel=1e-2)


def test_spacing_is_no_longer_a_param() -> None:
    """The spacing comes from each case's header (Batch.spacing); params.spacing is refused in one line."""
    with pytest.raises(InputError, match=r"unknown params for plugin 'cmfnet': \['spacing'\]") as err:
        tiny_method("params.spacing=[3.0, 1.25, 1.25]")
    assert "\n" not in str(err.value)
    assert "spacing" not in tiny_method().params


@pytest.mark.parametrize("override, message", [
    ("params.output=both", "params.output"), ("params.lambda_ct=-1", "lambda_ct"),
    ("params.crf_downsample=[2, 2]", "crf_downsample"), ("params.spacing=[1, 1]", "unknown params.*spacing"),
    ("params.unknown=1", "unknown params"),
])
def test_bad_params_are_refused(override: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tiny_method(override)


def test_switching_every_term_off_is_refused() -> None:
    with pytest.raises(InputError, match="every loss term"):
        tiny_method("params.use_ssl=false", "params.use_imr=false", "params.use_imc=false")


# -- cards ---------------------------------------------------------------------------------------
def test_cmfnet_cards_share_the_base_network_params_and_training_block() -> None:
    base = load_card(METHODS / "cmfnet.yaml")
    assert (base.name, base.network["arch"], base.scribble_variant, base.train) == ("CmFNet", "cmfnet", "sim", {})
    assert base.network["dropout"] == 0.5 and (base.network["ct_convs"], base.network["mr_convs"]) == (3, 4)
    for card, differs in (("cmfnet_autobg.yaml", {"scribble_variant": "autobg", "name": "CmFNet (AutoBG)"}),
                          ("cmfnet_fullmask.yaml", {"supervision": "mask"})):
        other = load_card(METHODS / card)
        assert (other.network, other.params, other.plugin, other.train) == \
            (base.network, base.params, base.plugin, base.train)
        for key, value in differs.items():
            assert getattr(other, key) == value


@pytest.mark.parametrize("stem, count", [("table4", 8), ("table5", 32), ("table6", 3), ("table7", 4),
                                         ("fig6_lambda", 18), ("fig6_alpha", 18)])
def test_variant_files_expand_and_every_variant_loads(stem: str, count: int) -> None:
    ids = method_ids(METHODS / f"{stem}.yaml")
    assert len(ids) == count
    for method_id in ids:
        path, variant, head = card_path_for_id(METHODS, method_id)
        card = load_card(path, variant=variant, head=head)
        assert card.table == stem and card.train == {} and card.id == method_id
        load_method(card)


def test_table4_variants_are_single_channel_vnets_with_min_n_4_downsamplings() -> None:
    for modality, channel in (("ct", 0), ("mr", 1)):
        for n in CONVS:
            card = load_card(METHODS / "table4.yaml", variant=f"{modality}{n}")
            assert card.channels == [channel]
            assert card.network == {"arch": "vnet", "width": 16, "n_convs": n, "downsamplings": min(n, 4),
                                    "dropout": 0.5}
            assert not card.params["use_imr"] and not card.params["use_imc"]


def test_sweeps_set_both_weights_together() -> None:
    lambdas = [load_card(METHODS / "fig6_lambda.yaml", variant=v.split(".")[1].partition("@")[0]).params
               for v in method_ids(METHODS / "fig6_lambda.yaml") if v.endswith("@mm")]
    assert [p["lambda_ct"] for p in lambdas] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(p["lambda_ct"] == p["lambda_mr"] for p in lambdas)
    alphas = [load_card(METHODS / "fig6_alpha.yaml", variant=v.split(".")[1].partition("@")[0]).params
              for v in method_ids(METHODS / "fig6_alpha.yaml") if v.endswith("@mm")]
    assert [p["alpha1"] for p in alphas] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(p["alpha1"] == p["alpha2"] for p in alphas)


def test_ablation_rows_switch_the_right_modules_and_terms() -> None:
    rows = {v: load_card(METHODS / "table6.yaml", variant=v).network for v in ("mfl", "mfl_cfe", "mfl_cfe_cff")}
    assert [(n["cfe"], n["cff"]) for n in rows.values()] == [(False, False), (True, False), (True, True)]
    terms = {v: load_method(load_card(METHODS / "table7.yaml", variant=v)).params  # over the defaults
             for v in ("ssl", "ssl_imr", "ssl_imc", "ssl_imr_imc")}
    assert [(p["use_ssl"], p["use_imr"], p["use_imc"]) for p in terms.values()] == \
        [(True, False, False), (True, True, False), (True, False, True), (True, True, True)]
    grid = load_card(METHODS / "table5.yaml", variant="ct6_mr4", head="mr")
    assert (grid.network["ct_convs"], grid.network["mr_convs"], grid.network["cfe"]) == (6, 4, False)
    params = load_method(grid).params
    assert (params["output"], params["use_imr"], params["use_imc"]) == ("mr", False, True)
