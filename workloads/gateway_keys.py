"""The gateway's key sync (charts/gateway.py, KeySync): the clients' keys, from the Secrets Manager secret the Secrets
Store CSI driver mounts, into the Kubernetes Secret Envoy Gateway's API key authentication reads (one key per client
id, Envoy Gateway api/v1alpha1/api_key_auth_types.go). Only the clients the settings name are written; a named client
without a key, or clients sharing one, stop the sync with their ids in the log, never a key. Standard library only:
it runs in a slim Python image. KUBERNETES_API and SERVICE_ACCOUNT_DIR are for its test; ONCE writes once and exits.
"""

import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

api = os.environ.get("KUBERNETES_API", "https://kubernetes.default.svc")
account = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
tls = ssl.create_default_context(cafile=account + "/ca.crt") if api.startswith("https:") else None
clients = json.loads(os.environ["CLIENTS"])
with open(os.environ["CLIENTS_FILE"]) as mounted:
    keys = json.load(mounted)
missing = [client for client in clients if not isinstance(keys.get(client), str) or not keys[client].strip()]
if missing:
    sys.exit("gateway clients without a key in the clients secret: " + ", ".join(missing))
# Envoy Gateway refuses a Secret in which two clients share a key, and then answers 500 on every route
# (internal/gatewayapi/securitypolicy.go at v1.9.0): never written.
sharing = sorted(c for c in clients if [keys[o].strip() for o in clients].count(keys[c].strip()) > 1)
if sharing:
    sys.exit("gateway clients sharing one key in the clients secret: " + ", ".join(sharing))
secret, namespace = os.environ["SECRET"], os.environ["NAMESPACE"]
body = json.dumps(
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret, "namespace": namespace},
        "data": {client: base64.b64encode(keys[client].strip().encode()).decode() for client in clients},
    }
).encode()
collection = api + "/api/v1/namespaces/" + namespace + "/secrets"
while True:
    with open(account + "/token") as token_file:
        token = token_file.read().strip()
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    try:
        request = urllib.request.Request(collection + "/" + secret, body, headers, method="PUT")
        urllib.request.urlopen(request, context=tls).close()
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        urllib.request.urlopen(urllib.request.Request(collection, body, headers, method="POST"), context=tls).close()
    print("gateway keys written for " + str(len(clients)) + " clients", flush=True)
    if os.environ.get("ONCE"):
        break
    # Written again every 5 minutes, in case the Secret was deleted.
    time.sleep(300)
