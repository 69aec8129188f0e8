"""The official Kubernetes Python client (`kubernetes.stream.portforward`, the WebSocket channel
protocol) through a relay: echoes SIZE random bytes through each listed pod port and prints
"ok PORT BYTES" per port, or the error the client raised. Usage:

    k8sclient.py URL NAMESPACE POD PORT[,PORT...] SIZE

With K8S_TOKEN in the environment, the client sends it as a bearer token
(`configuration.api_key`), on the API requests and on the port-forward's WebSocket upgrade. An
API error prints "api error STATUS REASON BODY" and exits 2.
"""
import os
import sys
import threading

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward


def main():
    url, namespace, pod, ports, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    configuration = client.Configuration()
    configuration.host = url
    if "K8S_TOKEN" in os.environ:
        configuration.api_key = {"authorization": os.environ["K8S_TOKEN"]}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.CoreV1Api(client.ApiClient(configuration))
    try:
        phase = api.read_namespaced_pod(pod, namespace).status.phase
        print("phase", phase, flush=True)
        forward = portforward(api.connect_get_namespaced_pod_portforward, pod, namespace, ports=ports)
    except ApiException as error:
        print("api error", error.status, error.reason, error.body, flush=True)
        sys.exit(2)
    failures = 0
    for port in [int(p) for p in ports.split(",")]:
        sock = forward.socket(port)
        sock.settimeout(20)
        payload = os.urandom(size)
        received = bytearray()

        def send():
            try:
                sock.sendall(payload)
            except OSError:
                pass  # a refused port's socket closes; the reader reports the port's error

        sender = threading.Thread(target=send)
        sender.start()
        try:
            while len(received) < size:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                received += chunk
        except Exception as error:  # the port's error channel, or a timeout
            print("error", port, forward.error(port) or error, flush=True)
            failures += 1
            continue
        sender.join()
        if bytes(received) == payload:
            print("ok", port, len(received), flush=True)
        else:
            print("mismatch", port, len(received), "error:", forward.error(port), flush=True)
            failures += 1
    forward.close()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
