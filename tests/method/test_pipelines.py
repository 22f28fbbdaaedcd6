"""Real pipelines (tiny SD3 and FLUX, built from config, loaded by path): loading, prompt embeddings
encoded once and cached, generation from them equal to the pipeline's own prompt path."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hpspec.core.errors import PipelineError  # noqa: E402
from hpspec.method.pipelines import (  # noqa: E402
    DiffusersPipelineGenerator,
    EmbeddedGenerator,
    Sampling,
    load_pipeline,
)
from hpspec.method.prompt_cache import cache_path, prompt_embeddings, release_encoders  # noqa: E402
from tests.tiny_pipelines import SIZE, TEXT_TOKENS  # noqa: E402

PROMPTS = ["a cat", "a dog", "a red bird"]
SAMPLING = Sampling(steps=2, guidance=2.0, size=SIZE, batch_size=2)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PromptCount:
    """Counts the prompts each text encoder's forward sees (its batch sizes), by wrapping forward."""

    def __init__(self, pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, int] = {}
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipeline, name, None)
            if encoder is not None:
                monkeypatch.setattr(encoder, "forward", self._counting(name, encoder.forward))

    def _counting(self, name: str, forward):
        def counted(input_ids, *args, **kwargs):
            self.seen[name] = self.seen.get(name, 0) + input_ids.shape[0]
            return forward(input_ids, *args, **kwargs)

        return counted


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_generation_from_cached_embeddings_equals_the_pipelines_own(
    kind: str, tiny_sd3_dir: Path, tiny_flux_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference is diffusers encoding the prompts itself inside __call__ (and, for SD3's
    guidance, the empty negative prompt), with the same seed and batch size."""
    directory = tiny_sd3_dir if kind == "sd3" else tiny_flux_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    own = DiffusersPipelineGenerator.from_pretrained(
        directory, steps=2, guidance=2.0, height=SIZE, width=SIZE, batch_size=2,
        call_kwargs={"max_sequence_length": TEXT_TOKENS},
    )  # fmt: skip
    pipeline = load_pipeline(directory)
    assert type(pipeline).__name__ == ("StableDiffusion3Pipeline" if kind == "sd3" else "FluxPipeline")
    count = PromptCount(pipeline, monkeypatch)
    out = tmp_path / "table.json"
    embeddings = prompt_embeddings(pipeline, kind, PROMPTS, out, max_sequence_length=TEXT_TOKENS, cfg=True)
    extra = 1 if kind == "sd3" else 0  # SD3 guides over the empty prompt; FLUX embeds its guidance
    assert set(count.seen.values()) == {len(PROMPTS) + extra}  # every encoder saw each prompt once
    release_encoders(pipeline)
    assert pipeline.text_encoder is None and pipeline.text_encoder_2 is None
    ours = EmbeddedGenerator(pipeline, embeddings, SAMPLING)
    for seed in (0, 1):
        expected = own.generate(PROMPTS, seed)
        assert torch.allclose(ours.generate(PROMPTS, seed), expected, atol=1e-6), seed
    assert not torch.equal(ours.generate(PROMPTS, 0), ours.generate(PROMPTS, 1))
    batches = list(ours.batches(PROMPTS, 0))
    assert [chunk for _, chunk in batches] == [PROMPTS[:2], PROMPTS[2:]]


def test_embeddings_are_encoded_once_and_read_back(tiny_sd3_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "table.json"
    first = load_pipeline(tiny_sd3_dir)
    made = prompt_embeddings(first, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS, cfg=True)
    files = list(tmp_path.glob(".hpspec-embeds-*.safetensors"))
    assert len(files) == 1

    second = load_pipeline(tiny_sd3_dir)
    count = PromptCount(second, monkeypatch)
    again = prompt_embeddings(second, "sd3", PROMPTS[:2], out, max_sequence_length=TEXT_TOKENS, cfg=True)
    assert count.seen == {}  # all from the file
    for key, fields in again.tensors.items():
        assert all(torch.equal(fields[f], made.tensors[key][f]) for f in fields)
    more = prompt_embeddings(second, "sd3", [*PROMPTS, "a green house"], out, max_sequence_length=TEXT_TOKENS)
    assert set(count.seen.values()) == {1} and len(more.tensors) == 4  # only the new prompt
    prompt_embeddings(second, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS - 4)
    assert set(count.seen.values()) == {1 + len(PROMPTS)}  # other settings: another key, encoded again
    assert len(list(tmp_path.glob(".hpspec-embeds-*.safetensors"))) == 2


def test_other_encoder_weights_are_another_cache(tiny_sd3_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "table.json"
    pipeline = load_pipeline(tiny_sd3_dir)
    prompt_embeddings(pipeline, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS)
    with torch.no_grad():
        pipeline.text_encoder_3.shared.weight[0, 0] += 1.0  # the first value: the fingerprint sees it
    count = PromptCount(pipeline, monkeypatch)
    prompt_embeddings(pipeline, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS)
    assert set(count.seen.values()) == {len(PROMPTS)}


def test_a_torn_cache_is_encoded_again(tiny_flux_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "table.json"
    pipeline = load_pipeline(tiny_flux_dir)
    made = prompt_embeddings(pipeline, "flux", PROMPTS, out, max_sequence_length=TEXT_TOKENS)
    (cached,) = tmp_path.glob(".hpspec-embeds-*.safetensors")
    cached.write_bytes(cached.read_bytes()[:100])
    count = PromptCount(pipeline, monkeypatch)
    again = prompt_embeddings(pipeline, "flux", PROMPTS, out, max_sequence_length=TEXT_TOKENS)
    assert set(count.seen.values()) == {len(PROMPTS)}
    assert all(torch.equal(again.tensors[k]["prompt_embeds"], v["prompt_embeds"]) for k, v in made.tensors.items())


def test_rank_zero_writes_and_other_ranks_read(tiny_sd3_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Ranks meet at the barrier: rank 0 encodes and writes before it, rank 1 reads after it."""
    out = tmp_path / "table.json"
    order: list[str] = []
    zero = load_pipeline(tiny_sd3_dir)
    prompt_embeddings(zero, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS, rank=0,
                      barrier=lambda: order.append("rank 0 at the barrier"))  # fmt: skip
    assert order == ["rank 0 at the barrier"] and len(list(tmp_path.glob(".hpspec-embeds-*"))) == 1
    one = load_pipeline(tiny_sd3_dir)
    count = PromptCount(one, monkeypatch)
    mtime = next(tmp_path.glob(".hpspec-embeds-*")).stat().st_mtime_ns
    prompt_embeddings(one, "sd3", PROMPTS, out, max_sequence_length=TEXT_TOKENS, rank=1,
                      barrier=lambda: order.append("rank 1 at the barrier"))  # fmt: skip
    assert count.seen == {} and order[-1] == "rank 1 at the barrier"
    assert next(tmp_path.glob(".hpspec-embeds-*")).stat().st_mtime_ns == mtime  # rank 1 wrote nothing


def test_load_errors_are_one_line(tmp_path: Path, tiny_sd3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PipelineError, match="cannot load a diffusers pipeline") as raised:
        load_pipeline(tmp_path)
    assert "\n" not in str(raised.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match="HF_HUB_OFFLINE"):
        load_pipeline("nobody-hpspec/no-such-pipeline")
    with pytest.raises(PipelineError, match="expected one of bf16, fp16, fp32"):
        load_pipeline(tiny_sd3_dir, dtype="int3")


def test_dtype_loads_the_weights_in_it(tiny_flux_dir: Path) -> None:
    pipeline = load_pipeline(tiny_flux_dir, dtype="bf16")
    assert pipeline.transformer.dtype == torch.bfloat16
    assert cache_path(Path("/x/t.json"), "ab" * 32).name.startswith(".hpspec-embeds-abab")
