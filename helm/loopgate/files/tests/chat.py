# `helm test`: the gateway is ready, and one chat completion comes back with a Loopgate id.
# Standard library only (it runs in the Loopgate image); tests/deploy runs it too.
import json
import os
import time
import urllib.request

base = os.environ["LOOPGATE_URL"].rstrip("/")
model = os.environ["LOOPGATE_TEST_MODEL"]
headers = {"Content-Type": "application/json"}
if os.environ.get("LOOPGATE_TEST_API_KEY"):
    headers["Authorization"] = "Bearer " + os.environ["LOOPGATE_TEST_API_KEY"]

for _ in range(30):
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as answer:
            if answer.status == 200:
                break
    except OSError as exc:
        print(f"readyz: {exc}", flush=True)
    time.sleep(2)
else:
    raise SystemExit("FAIL: /readyz never answered 200")
print("readyz: 200", flush=True)

ask = {
    "model": model,
    "max_tokens": 16,
    "user": "helm-test",
    "messages": [{"role": "user", "content": "Say hello: this is helm test."}],
}
request = urllib.request.Request(
    base + "/v1/chat/completions", json.dumps(ask).encode(), headers, method="POST"
)
with urllib.request.urlopen(request, timeout=120) as answer:
    doc = json.load(answer)
    variant = answer.headers.get("X-Loopgate-Variant")
if not str(doc.get("id", "")).startswith("lg1.") or not doc.get("choices"):
    raise SystemExit(f"FAIL: unexpected answer {doc}")
text = doc["choices"][0]["message"]["content"] or ""
print(f"chat: {model} -> variant {variant}, model {doc.get('model')}: {text[:60]!r}")
print("PASS")
