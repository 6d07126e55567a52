# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Security: hostile inputs, adversarial examples, model integrity, server configuration
#
# Production requests are not all friendly. The input guard (`lab2prod.kinds.guard.InputGuard`) is
# what the served handler runs before anything reaches the model: a byte limit, the format by
# its magic bytes (never the file name), a pixel limit read from the header before decoding
# (decompression bombs), one frame only, the colour modes the lab used, sane dimensions, a full
# decode (truncated files), then NaN/Inf, shape and range checks and a z-score screen of the
# input statistics against the lab's. Every refusal has a reason code.
#
# A text model gets JSON `{"text": ...}` and its guard (`lab2prod.kinds.guard.TextGuard`) refuses
# bodies that are not UTF-8 or not JSON, wrong keys, a text that is not a string, blank, full of
# control characters, or over the model's token limit (refused, never silently cut). A tensor
# model gets JSON of named arrays and its guard (`TensorGuard`) refuses wrong names, dtypes
# (fractions in token ids) and shapes, NaN, and ids outside the range the lab's inputs span.
#
# Adversarial examples are measured honestly: FGSM and PGD on the reference model, with the
# perturbation budget in the usual [0, 1] pixel scale and the model's normalization inside the
# attacked function. A statistics screen is not a defence against them, and the numbers show it.

# %% tags=["parameters"]
model = "digits_cnn"  # the model attacked and served
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its requests are JSON arrays
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
eps = 0.03  # L-inf budget of the attacks in [0, 1] pixel units (8/255 is about 0.031)
pgd_steps = 10  # PGD iterations
attack_images = 200  # held-out images attacked
z_limit = 5.0  # z-score screen threshold on the input statistics
max_bytes = 1000000  # request size limit of the guard
fuzz_mutations = 10000  # seeded mutations of valid request bodies sent through the guard in process (hypothesis)
live_server = True  # also send the hostile inputs to a real TorchServe with the guard in its handler
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for PGD random starts and untrained weights

# %%
import pandas as pd
import torch

from lab2prod.core.results import record
from lab2prod.kinds.codec import codec_for
from lab2prod.studies import fuzz, security
from lab2prod.studies import notebook as nb
from lab2prod.studies.serving import request_images

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

codec = codec_for(loaded, max_bytes=max_bytes, z_limit=z_limit)
print(f"{codec.kind} requests; guard: {codec.guard}")

# %% [markdown]
# ## Every bad input tried
#
# `rejected` with its `reason` code is the expected answer; `crashed` would mean an exception
# other than a refusal escaped the guard. With `live_server`, the same inputs (and requests with
# no token or a wrong one) go to a real TorchServe whose handler runs this guard, and the server
# must still answer a good request afterwards.

# %%
inputs = codec.hostile(max_bytes, request_images(loaded, 1, seed)[0][1])
tried = security.try_inputs(codec, inputs)
if live_server:
    tried = security.try_live(loaded, run_dir, inputs, tried, seed, max_bytes)
pd.DataFrame(tried).set_index("input")

# %% [markdown]
# ## The fuzzed front door
#
# The list above holds the bad inputs someone thought of. Here hypothesis draws `fuzz_mutations`
# mutations of the held-out request bodies from the seed: bit flips, truncations, splices of two
# bodies, inserted bytes, image headers that declare huge sizes, malformed JSON and UTF-8, JSON
# numbers replaced by NaN, Infinity or values no float32 holds. Each goes through the same guard in
# process and must end accepted or refused with a reason code: any other exception is a crash a
# client could trigger, and an accepted input holding NaN or Infinity would reach the model.

# %%
fuzzed = fuzz.fuzz_codec(codec, [body for _, body in request_images(loaded, 16, seed)], fuzz_mutations, seed)
fuzz_summary = fuzzed.summary()
pd.DataFrame([{"mutation": kind, "bodies": n} for kind, n in fuzz_summary["by_mutation"].items()]
             + [{"mutation": f"refused: {code}", "bodies": n} for code, n in fuzz_summary["codes"].items()]
             + [{"mutation": "accepted", "bodies": fuzzed.accepted},
                {"mutation": "crashed", "bodies": fuzzed.crash_count}]).set_index("mutation")

# %% [markdown]
# ## Adversarial examples (FGSM, PGD)
#
# Clean accuracy against accuracy under attack, and the share of attacked images the z-score
# screen flags. Expect the screen to catch few or none: the perturbations are small by design.

# %%
if loaded.family in ("digits", "photos") and not loaded.lab_transform:
    from lab2prod.kinds.preprocess import lab_transform_for
    from lab2prod.kinds.transforms import recipe_transform
    from lab2prod.models.reference import reference_images

    _, recipe = lab_transform_for(loaded.family)
    images, labels = reference_images(loaded.family, "test")
    picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:attack_images]
    unnormalized = recipe_transform(recipe, normalize=False)
    x01 = torch.stack([unnormalized(images[i]) for i in picks])
    labels = torch.as_tensor(labels)[picks]
    adversarial, examples = security.adversarial_report(loaded.module, x01, labels, recipe.mean, recipe.std, eps,
                                                        codec.guard, pgd_steps, seed)
else:
    adversarial, examples = None, None
pd.Series(adversarial).to_frame("value") if adversarial else \
    f"skipped: the attacks need labelled images and the lab's normalization (the reference models); {model!r} " \
    f"takes {loaded.inputs_text}"

# %%
fig = security.plot_adversarial(examples) if examples else None

# %% [markdown]
# ## Model integrity
#
# Each file of the run's manifest checked by sha256 before it would be loaded; a tampered copy
# refused; a whole pickled model refused by weights-only loading (unpickling runs code).

# %%
integrity = security.integrity_checks(run_dir, run_dir / "security")
pd.DataFrame(integrity).set_index("check")

# %% [markdown]
# ## Server configuration audit (every server that wrote its config in this run)
#
# Each server of the registry audits the config the serving notebook left for it: TorchServe's
# `config.properties` (or, without one, the deployment configuration lab2prod writes), Ray Serve's
# Serve config when it was served. Each item pass/fail with the fix.

# %%
audit, audited = security.audit_servers(run_dir)
print("audited:", ", ".join(str(path.relative_to(run_dir)) for path in audited))
pd.DataFrame(audit).set_index("item")

# %% [markdown]
# ## Gates
#
# `security:inputs`: every bad input refused with a reason, nothing crashed, and (live) the server
# still answers. `security:integrity`: all integrity checks pass. `security:config`: every audit
# item passes. `security:fuzz`: every mutation accepted or refused with a reason code, none crashed,
# nothing holding NaN or Infinity accepted.

# %%
# NBVAL_CHECK_OUTPUT
gates = [*security.security_gates(tried, integrity, audit), fuzz.fuzz_gate(fuzzed, "security:fuzz", fuzz_mutations)]
record(run_dir, "security", security.SecurityResults(
    inputs=[{k: r.get(k) for k in ("input", "rejected", "reason", "server_alive", "server_status")}
               for r in tried or []],
    adversarial=adversarial,
    integrity=integrity,
    config_audit=audit,
    fuzz=fuzz_summary,
), gates, notebook="07_security")
nb.gates_frame(gates)[["verdict", "threshold"]]
