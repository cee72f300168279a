"""Browser tests of the web chat page (crates/exo-api/web) against a running node.

Drives Debian's chromium through Playwright (never a downloaded browser). Fixtures from conftest.py: `node`
(.base_url, .model: a node serving the page and the API), `keyed_node` (the same, needing conftest.API_KEY) and
`output_dir` (where the screenshot goes).
The model's words are not checked beyond being non-empty: it is a tiny model.
"""
import json
import re
import shutil
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

TIMEOUT_MS = 60_000  # a generous wait for answers on a slow CPU


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, node):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(node.base_url + "/")
    # The picker is filled from /v1/models; pick the node's model.
    pg.wait_for_function(
        "m => [...document.querySelectorAll('#model option')].some(o => o.value === m)", arg=node.model,
        timeout=TIMEOUT_MS)
    pg.select_option("#model", node.model)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def topology(node):
    with urllib.request.urlopen(node.base_url + "/v1/topology", timeout=10) as r:
        return json.load(r)


def set_sampling(page, **params):
    """Adds `params` to the chat requests the page sends. The page sends no sampling parameters, so the node's
    defaults (temperature 0.8, a new seed each time) would draw another answer each run, now and then one that runs
    on for thousands of tokens; the tests fix what they need."""
    def amend(route):
        body = json.loads(route.request.post_data or "{}")
        body.update(params)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", amend)


def test_chat_streams_an_answer_with_stats_and_shows_the_cluster(page, node, output_dir):
    set_sampling(page, temperature=0, max_tokens=64)
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")

    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens/s", timeout=TIMEOUT_MS)
    assert answer.locator(".content").inner_text().strip(), "the answer is empty"
    expect(answer.locator(".error")).to_have_count(0)
    expect(page.locator(".message.user").last).to_have_text("What is the capital of France?")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()

    # The cluster panel has a card for this node with the layer range it holds (the model is loaded by now).
    topo = topology(node)
    me = next(n for n in topo["nodes"] if n["id"] == topo["self"])
    assert me["model"] is not None, f"topology reports no model after an answer: {me}"
    layers = me["model"]["layers"]
    card = page.locator(f'#cluster .node[data-node-id="{topo["self"]}"]')
    expect(card).to_have_count(1, timeout=10_000)
    expect(card).to_contain_text("this node")
    expect(card).to_contain_text(me["model"]["id"], timeout=10_000)  # the panel polls every 2 s
    expect(card).to_contain_text(f"layers {layers['start']}–{layers['end']} of {me['model']['n_layers']}")
    # And the plan the answer ran on: its model and its ring of stages.
    plan = topo["plans"][0]
    drawn = page.locator(f'#plans .plan[data-plan-id="{plan["id"]}"]')
    expect(drawn).to_have_count(1, timeout=10_000)
    expect(drawn).to_contain_text(plan["model"])
    stage = plan["stages"][0]
    expect(drawn).to_contain_text(f"{stage['node_id'][:8]} {stage['start']}–{stage['end']}")
    expect(drawn.locator(".ring .fill")).to_have_count(len(plan["stages"]))

    shot = output_dir / "web-chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 0


def test_stop_keeps_the_partial_answer_marked_stopped(page):
    # Sampling from the whole vocabulary with a fixed seed: a long answer, with no early end of text.
    set_sampling(page, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    page.fill("#prompt", "Write a long story about a dragon who learns to cook. Make it at least 1000 words long.")
    page.press("#prompt", "Enter")  # Enter sends

    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text(re.compile(r"\S"), timeout=TIMEOUT_MS)
    expect(page.locator("#send")).to_be_disabled()
    page.click("#stop", timeout=5_000)

    expect(answer).to_have_class(re.compile(r"\bstopped\b"))
    expect(answer.locator(".stats")).to_contain_text("stopped")
    expect(answer.locator(".content")).to_have_text(re.compile(r"\S"))  # the partial answer stays
    expect(answer.locator(".error")).to_have_count(0)
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def test_code_fences_render_as_code_and_model_text_is_never_html(page):
    # The page's own renderer on text a model could write (a tiny model rarely writes code on request).
    rendered = page.evaluate("""() => {
        const box = document.createElement("div");
        box.append(render("Try:\\n```python\\nprint('<b>hi</b>')\\n```\\nthen `x = 1` and <i>this</i>"));
        return {code: box.querySelector("pre code")?.textContent, lang: box.querySelector(".lang")?.textContent,
                inline: [...box.querySelectorAll(":scope > code")].map(c => c.textContent),
                tags: box.querySelectorAll("b, i").length};
    }""")
    assert rendered == {"code": "print('<b>hi</b>')", "lang": "python", "inline": ["x = 1"], "tags": 0}
    # A fence still open mid-stream is code so far.
    partial = page.evaluate("""() => {
        const box = document.createElement("div");
        box.append(render("Here:\\n```js\\nlet a = 1;"));
        return box.querySelector("pre code")?.textContent;
    }""")
    assert partial == "let a = 1;"


def chat_stream(*deltas, finish="stop"):
    """An SSE body in the shape the node streams a chat in (crates/exo-api/src/server.rs): the role chunk, one chunk
    per delta, the finish chunk, [DONE]."""
    def chunk(delta, reason=None):
        return {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    events = [chunk({"role": "assistant", "content": ""}), *map(chunk, deltas), chunk({}, finish)]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_a_thinking_models_reasoning_is_folded_above_its_answer(page):
    # The test model does not think: the page is given a thinking model's stream (reasoning_content deltas, then
    # content), the shape crates/exo-api/src/server.rs's tests and crates/exo/tests/reasoning.rs check.
    streams = [
        chat_stream({"reasoning_content": "The user asks"}, {"reasoning_content": " for a capital."},
                    {"content": "Paris"}, {"content": "."}),
        chat_stream({"reasoning_content": "Still thinking"}, finish="length"),
    ]
    sent = []

    def fake(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(status=200, content_type="text/event-stream", body=streams[len(sent) - 1])

    page.route("**/v1/chat/completions", fake)
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_be_visible(timeout=TIMEOUT_MS)
    thinking = answer.locator("details.reasoning")
    expect(thinking.locator("summary")).to_have_text(re.compile(r"^Thought for \d+\.\d s$"))
    expect(thinking.locator(".reasoning-text")).to_have_text("The user asks for a capital.")
    assert thinking.evaluate("d => d.open") is False, "the reasoning stays open after the answer started"
    expect(answer.locator(".content")).to_have_text("Paris.")
    assert answer.evaluate("m => m.firstElementChild.matches('details.reasoning')"), "the reasoning is not first"

    # The next question sends the answer back without its reasoning; reasoning with no answer after it stays open.
    page.fill("#prompt", "And of Italy?")
    page.click("#send")
    second = page.locator(".message.assistant").nth(1)
    expect(second.locator(".stats")).to_contain_text("cut off", timeout=TIMEOUT_MS)
    assert sent[1]["messages"][1] == {"role": "assistant", "content": "Paris."}, sent[1]["messages"]
    expect(second.locator("details.reasoning .reasoning-text")).to_have_text("Still thinking")
    expect(second.locator("details.reasoning summary")).to_have_text(re.compile(r"^Thought for "))
    assert second.locator("details.reasoning").evaluate("d => d.open") is True
    expect(second.locator(".error")).to_have_count(0)


def test_downloads_show_in_the_cluster_panel(page, node):
    # A model by hf: reference, fetched from the stand-in hub through the API; the panel lists the download.
    from conftest import HUB_REFERENCE, MODEL_FILE
    body = json.dumps({"model": HUB_REFERENCE, "max_tokens": 1, "temperature": 0,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()
    request = urllib.request.Request(node.base_url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200
    downloads = json.load(urllib.request.urlopen(node.base_url + "/v1/downloads", timeout=10))["data"]
    assert downloads and all(d["state"] == "done" for d in downloads), downloads
    assert sum(d["from_hub_bytes"] for d in downloads) > 0, downloads
    # The panel is polled every 2 s.
    card = page.locator("#downloads .download").first
    expect(card).to_be_visible(timeout=10_000)
    expect(card.locator(".model")).to_have_text(MODEL_FILE)
    expect(page.locator("#downloads-head")).to_be_visible()
    expect(card).to_contain_text("done")


def test_the_cluster_panel_shows_each_gpu_and_its_layers(page, node):
    # No GPU here: the page is given the topology a node on a GPU with CPU offload reports (the shape
    # crates/exo-api/src/topology.rs writes, its device figures as crates/exo-cluster/tests/devices.rs has them).
    doc = topology(node)
    me = next(n for n in doc["nodes"] if n["id"] == doc["self"])
    me["devices"] = [
        {"name": "cuda:0", "description": "NVIDIA GeForce RTX 3090", "memory_total_bytes": 24 << 30,
         "memory_free_bytes": 23 << 30, "usable_bytes": (23 << 30) - (512 << 20), "matvec_bytes_per_s": 0,
         "compute_capability": "8.6", "layers": {"start": 0, "end": 19}},
        {"name": "cpu", "description": "", "memory_total_bytes": 0, "memory_free_bytes": 0, "usable_bytes": 8 << 30,
         "matvec_bytes_per_s": 0, "compute_capability": None, "layers": {"start": 20, "end": 29}},
    ]
    doc["plans"] = [{"id": "00112233445566ff", "model": "m", "n_layers": 30, "placement": None, "stages": [
        {"node_id": doc["self"], "start": 0, "end": 29,
         "devices": [{"device": "cuda:0", "start": 0, "end": 19}, {"device": "cpu", "start": 20, "end": 29}]}]}]
    page.route("**/v1/topology", lambda route: route.fulfill(status=200, content_type="application/json",
                                                            body=json.dumps(doc)))
    card = page.locator(f'#cluster .node[data-node-id="{doc["self"]}"]')
    gpu = card.locator('.device[data-device="cuda:0"]')
    expect(gpu).to_have_text("cuda:0 · NVIDIA GeForce RTX 3090 · 23.0 / 24.0 GiB free · compute 8.6 · layers 0–19",
                             timeout=10_000)
    expect(card.locator(".device").nth(1)).to_have_text("cpu · the layers its GPUs cannot hold · layers 20–29")
    expect(page.locator('#plans .plan[data-plan-id="00112233445566ff"]')).to_contain_text(
        "0–29 (cuda:0 0–19, cpu 20–29)")


def test_a_keyed_node_asks_for_the_key_once_and_answers(browser, keyed_node):
    from conftest import API_KEY
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors, refused = [], []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
    sent_keys = []
    pg.on("request", lambda r: sent_keys.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    set_sampling(pg, temperature=0, max_tokens=16)
    pg.goto(keyed_node.base_url + "/")

    # The page loads without the key, is refused, and asks.
    form = pg.locator("#key-dialog")
    expect(form).to_be_visible(timeout=TIMEOUT_MS)
    pg.fill("#key-input", API_KEY)
    pg.click("#key-form button[type=submit]")
    expect(form).to_be_hidden()
    pg.wait_for_function(
        "m => [...document.querySelectorAll('#model option')].some(o => o.value === m)", arg=keyed_node.model,
        timeout=TIMEOUT_MS)
    pg.select_option("#model", keyed_node.model)
    assert pg.evaluate("() => localStorage.getItem('exo.apiKey')") == API_KEY

    pg.fill("#prompt", "What is the capital of France?")
    pg.click("#send")
    answer = pg.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens/s", timeout=TIMEOUT_MS)
    assert answer.locator(".content").inner_text().strip(), "the answer is empty"
    expect(answer.locator(".error")).to_have_count(0)
    expect(pg.locator("#cluster-status")).to_have_text("1 node", timeout=10_000)

    # Once the key was given, every request carried it and none was refused; a reload uses the kept key without
    # asking.
    refused_before = len(refused)
    assert refused_before >= 1, "the node never refused the page without a key"
    key_given = sent_keys.index(f"Bearer {API_KEY}")
    assert all(k == f"Bearer {API_KEY}" for k in sent_keys[key_given:]), sent_keys
    pg.reload()
    pg.wait_for_function(
        "m => [...document.querySelectorAll('#model option')].some(o => o.value === m)", arg=keyed_node.model,
        timeout=TIMEOUT_MS)
    expect(form).to_be_hidden()
    assert len(refused) == refused_before, refused

    # A kept key the node refuses is asked for again.
    pg.evaluate("() => localStorage.setItem('exo.apiKey', 'wrong')")
    pg.reload()
    expect(form).to_be_visible(timeout=TIMEOUT_MS)
    expect(pg.locator("#key-message")).to_contain_text("refused")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_a_keyed_node_refuses_requests_without_the_key(keyed_node):
    from conftest import API_KEY
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(keyed_node.base_url + "/v1/models", timeout=10)
    assert refused.value.code == 401
    assert json.load(refused.value)["error"]["code"] == "invalid_api_key"
    request = urllib.request.Request(keyed_node.base_url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
