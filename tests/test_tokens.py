import pytest

from maskdiffusion.core.classes import ClassListError, ClassSpec, as_class_specs, preset_classes
from maskdiffusion.core.tokens import layout_prompts


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from maskdiffusion.model.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenizer_matches_stable_diffusion_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("impervious surfaces").input_ids == [49406, 7727, 6418, 20746, 49407]


def test_multi_token_class_spans(tokenizer):
    layout = layout_prompts(preset_classes("potsdam6"), tokenizer)
    assert layout.prompts == ("impervious surfaces and building and low vegetation and tree and car and clutter",)
    ids = layout.input_ids[0]
    assert len(ids) == 77 and ids[0] == 49406
    spans = [(s[0].start, s[0].stop) for s in layout.spans]
    # <bos> impervious(3) and building and low vegetation(2) and tree and car and clutter
    assert spans == [(1, 4), (5, 6), (7, 9), (10, 11), (12, 13), (14, 15)]
    assert [ids[i] for i in (4, 6, 9, 11, 13)] == [537] * 5
    assert ids[15] == 49407
    assert ids[1:4] == (7727, 6418, 20746)


def test_several_prompts_per_class(tokenizer):
    layout = layout_prompts(as_class_specs([ClassSpec("impervious", ("road", "parking lot")), "tree"]), tokenizer)
    assert layout.prompts == ("road and parking lot and tree",)
    assert [(s.start, s.stop) for s in layout.spans[0]] == [(1, 2), (3, 5)]
    assert [(s.start, s.stop) for s in layout.spans[1]] == [(6, 7)]


def test_more_than_75_tokens_continue_in_further_prompts(tokenizer):
    names = [f"class number {i}" for i in range(40)]
    layout = layout_prompts(as_class_specs(names), tokenizer)
    assert layout.n_prompts > 1
    for k, name in enumerate(names):
        (span,) = layout.spans[k]
        ids = layout.input_ids[span.prompt]
        assert list(ids[span.start : span.stop]) == tokenizer(name, add_special_tokens=False).input_ids
        assert span.stop <= 76
    assert sum(len(p.split(" and ")) for p in layout.prompts) == 40


def test_a_prompt_longer_than_one_clip_prompt_is_rejected(tokenizer):
    with pytest.raises(ClassListError, match="more than the 75"):
        layout_prompts(as_class_specs([" ".join(["word"] * 80)]), tokenizer)


def test_no_classes_gives_an_empty_prompt(tokenizer):
    layout = layout_prompts([], tokenizer)
    assert layout.input_ids[0][:2] == (49406, 49407) and layout.spans == ()


@pytest.mark.parametrize("classes, code", [
    (",".join(f"class number {i}" for i in range(40)), 0),
    ("road,tree=" + " ".join(["tall green tree"] * 30), 2),
])
def test_long_class_lists_reach_the_user_without_the_tokenizers_warning(tmp_path, tiny_model_dir, classes, code):
    """Item 12: 40 classes (several prompts' worth) run; a single prompt text longer than one CLIP
    prompt is one line of ours. Neither shows transformers' 'Token indices sequence length' text
    (nor a Python warning) on the stderr a user reads."""
    import shutil
    from pathlib import Path

    from cli_process import run_cli

    image = shutil.copy(Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif", tmp_path / "neon.tif")
    r = run_cli("segment", image, "--classes", classes, "--model", tiny_model_dir, "--quiet", "--out",
                tmp_path / "seg.tif")
    assert r.returncode == code, r.stderr
    assert "Token indices" not in r.stderr and "indexing errors" not in r.stderr and "Warning" not in r.stderr, r.stderr
    if code:
        assert len(r.stderr.strip().splitlines()) == 1 and "more than the 75 of one prompt" in r.stderr, r.stderr
