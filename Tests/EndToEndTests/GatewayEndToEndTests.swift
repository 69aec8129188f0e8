import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The gateway (`portforward gateway`, issue 11) in front of three node relays, each on a node host
// of its own (a network namespace on a bridge: Cluster.swift), each node with two pods. Every
// client reaches pods on every node through the gateway alone: our client on the node path, the
// seed path (--node) and the Kubernetes path (--api-path), stock kubectl in both of its modes, and
// the official Python client. Each pod also says who it is (identityPort), so a stream that the
// gateway sends to the wrong node shows.

/// A pod port nothing listens on, in every cluster pod.
private let refusedPort = closedPort

@Suite("End to end: the gateway in front of three node relays on a bridge", .serialized)
struct GatewayEndToEndTests {
    /// Echoes `size` random bytes through the local `port` (sent and received at once), then
    /// 300 KiB on a half-closed connection that must still get its whole answer.
    private func expectEcho(_ port: Int, size: Int, _ what: String) throws {
        let payload = Net.randomBytes(size)
        let echoed = try Net.echo("127.0.0.1", port, payload, timeout: 90)
        #expect(Net.same(echoed, payload), "\(what): \(Net.firstDifference(echoed, payload))")
        let half = Net.randomBytes(300 * 1024)
        let answer = try Net.echo("127.0.0.1", port, half, halfClose: true, timeout: 30)
        #expect(Net.same(answer, half), "\(what), half-closed: \(Net.firstDifference(answer, half))")
    }

    /// A refused pod port through `forwarder`: that connection closes, one line says why, and the
    /// rest goes on (the pod's identity port still answers).
    private func expectRefused(_ forwarder: ForwarderProcess, pod: ClusterPod) throws {
        let fd = try Net.connect("127.0.0.1", try forwarder.local(refusedPort))
        let closed = Net.readUntilClosed(fd, timeout: 15)
        close(fd)
        #expect(["eof", "reset"].contains(closed.outcome) && closed.bytes == 0, "refused port: \(closed)")
        let prefix = "error: forwarding port \(refusedPort) to pod default/\(pod.name)"
        let line = try forwarder.child.waitFor("the line \"\(prefix): ...\"", timeout: 10) { text in
            text.split(separator: "\n").first { $0.contains(prefix) }.map(String.init)
        }
        #expect(line.lowercased().contains("refused"), "\(line)")
        #expect(try identity(try forwarder.local(identityPort)) == pod.identity, "after the refused port")
        #expect(forwarder.child.isRunning, "\(forwarder.child.output)")
    }

    /// Every "Forwarding from 127.0.0.1:LOCAL -> REMOTE" of kubectl's output, remote -> local.
    private func kubectlPorts(_ child: Child, _ remotes: [Int]) throws -> [Int: Int] {
        try child.waitFor("kubectl's Forwarding lines for \(remotes)") { text -> [Int: Int]? in
            var found: [Int: Int] = [:]
            for line in text.split(separator: "\n") where line.hasPrefix("Forwarding from 127.0.0.1:") {
                let parts = line.dropFirst("Forwarding from 127.0.0.1:".count).components(separatedBy: " -> ")
                if parts.count == 2, let local = Int(parts[0]), let remote = Int(parts[1]) { found[remote] = local }
            }
            return remotes.allSatisfy { found[$0] != nil } ? found : nil
        }
    }

    @Test("The fixture: each node relay answers over the bridge from the root namespace, for its own pods only")
    func fixture() throws {
        try Kubectl.require(Kubectl.versioned)
        try withCluster { cluster in
            for node in cluster.nodes {
                let relay = try #require(node.relayProcess)
                let list = try cluster.get(relay, "/api/v1/namespaces/default/pods")
                #expect(list.code == 200, "\(node.name): \(list)")
                let rows = try Cluster.podRows(list.body)
                #expect(rows.map(\.name) == node.pods.map(\.name).sorted(), "\(node.name): \(rows)")
                #expect(rows.allSatisfy { $0.node == node.name && $0.phase == "Running" }, "\(node.name): \(rows)")
                // Our client, straight to the node relay on its address.
                let pod = node.pods[0]
                let forwarder = try cluster.forward(node.url, pod: pod.name, ports: [echoPort, identityPort])
                #expect(try identity(try forwarder.local(identityPort)) == pod.identity)
                let payload = Net.randomBytes(mebibyte)
                let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
                #expect(Net.same(echoed, payload), "\(node.name): \(Net.firstDifference(echoed, payload))")
                forwarder.child.kill()
            }
            // kubectl over the bridge, to one node's relay.
            let node = cluster.nodes[1]
            let relay = try #require(node.relayProcess)
            let kubectl = try cluster.kubectlForward(relay, ["pod/\(node.pods[0].name)", "0:\(echoPort)", "0:\(identityPort)"])
            let ports = try kubectlPorts(kubectl.child, [echoPort, identityPort])
            #expect(try identity(try #require(ports[identityPort])) == node.pods[0].identity)
            try expectEcho(try #require(ports[echoPort]), size: mebibyte, "kubectl to \(node.name)'s relay")
            kubectl.child.kill()
            // A node relay knows only its own pods.
            let other = try cluster.get(relay, "/api/v1/namespaces/default/pods/web-a")
            #expect(other.code == 404, "\(other)")
            for node in cluster.nodes { #expect(node.relay?.isRunning == true, "\(node.name)'s relay ended") }

            // kill -9 and a restart on the same address at once (as nodeDown does): it serves again.
            let last = cluster.nodes[2]
            cluster.killRelay(last)
            #expect(last.relay == nil)
            try cluster.startRelay(last)
            let forwarder = try cluster.forward(last.url, pod: last.pods[1].name, ports: [identityPort])
            #expect(try identity(try forwarder.local(identityPort)) == last.pods[1].identity)
        }
    }

    @Test("Our client through the gateway to a pod on each node: the node path, the seed path (--node) and the Kubernetes path (--api-path); 64 MiB, half-close, a refused port, an unknown pod")
    func ownClient() throws {
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            for (index, node) in cluster.nodes.enumerated() {
                let pod = node.pods[0]
                // The node path: no --node, no kubeconfig.
                let plain = try cluster.forward(gateway.url, pod: pod.name, ports: [echoPort, identityPort, refusedPort])
                #expect(try identity(try plain.local(identityPort)) == pod.identity, "node path to \(pod.name)")
                try expectEcho(try plain.local(echoPort), size: index == 0 ? 64 * mebibyte : 4 * mebibyte, "node path to \(pod.name)")

                try expectRefused(plain, pod: pod)
                plain.child.kill()

                // The seed path, naming the node.
                let seed = try cluster.forward(gateway.url, pod: pod.name, ports: [echoPort, identityPort], extra: ["--node", node.name])
                #expect(try identity(try seed.local(identityPort)) == pod.identity, "seed path to \(pod.name)")
                try expectEcho(try seed.local(echoPort), size: index == 1 ? 64 * mebibyte : 4 * mebibyte, "seed path to \(pod.name)")
                seed.child.kill()

                // The Kubernetes path, as kubectl asks.
                let api = try cluster.forward(gateway.url, pod: pod.name, ports: [echoPort, identityPort], extra: ["--api-path"])
                #expect(try identity(try api.local(identityPort)) == pod.identity, "Kubernetes path to \(pod.name)")
                try expectEcho(try api.local(echoPort), size: 4 * mebibyte, "Kubernetes path to \(pod.name)")
                api.child.kill()
            }
            let unknown = try E2E.run(["env", "-u", "KUBECONFIG", "HOME=\(cluster.scene.directory)", E2E.binary, "forward",
                                       "--server", gateway.url, "--io", E2E.io, "nosuchpod", "1234"],
                                      timeout: 20, directory: cluster.scene.directory)
            #expect(unknown.status != 0, "\(unknown)")
            #expect((unknown.stdout + unknown.stderr).contains("pod \"default/nosuchpod\" not found"), "\(unknown)")
            #expect(!unknown.stdout.contains("Forwarding from"), "\(unknown)")
            #expect(gateway.child.isRunning)
        }
    }

    @Test("Our client through the gateway in kubectl's protocols, forced with --protocol: the WebSocket tunnel on the seed path, plain SPDY on the Kubernetes path; 16 MiB, half-close, a refused port")
    func ownClientInKubectlProtocols() throws {
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            for (index, (wire, path, name)) in [("websocket", ["--node", cluster.nodes[0].name], "SPDY/3.1 in a WebSocket"),
                                                ("spdy", ["--api-path"], "SPDY/3.1")].enumerated() {
                let pod = cluster.nodes[index].pods[1]
                let forwarder = try cluster.forward(gateway.url, pod: pod.name, ports: [echoPort, identityPort, refusedPort],
                                                    extra: ["--protocol", wire, "-v"] + path)
                #expect(forwarder.child.stderr.contains("session to \(gateway.url): \(name)\n"), "\(forwarder.child.stderr)")
                #expect(try identity(try forwarder.local(identityPort)) == pod.identity, "\(wire) to \(pod.name)")
                try expectEcho(try forwarder.local(echoPort), size: 16 * mebibyte, "\(wire) to \(pod.name)")
                try expectRefused(forwarder, pod: pod)
                forwarder.child.kill()
            }
            #expect(gateway.child.isRunning)
        }
    }

    @Test("Stock kubectl through the gateway to a pod on each node, over the WebSocket tunnel and over plain SPDY; a refused port; NotFound")
    func kubectl() throws {
        try Kubectl.require(Kubectl.versioned)
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            let modes: [(name: String, environment: [String])] = [("WebSocket", []), ("SPDY", ["KUBECTL_PORT_FORWARD_WEBSOCKETS=false"])]
            for (modeIndex, mode) in modes.enumerated() {
                for (index, node) in cluster.nodes.enumerated() {
                    let pod = node.pods[modeIndex]
                    let forward = try cluster.kubectlForward(gateway, ["pod/\(pod.name)", "0:echo", "0:\(identityPort)"],
                                                             environment: mode.environment)
                    let ports = try kubectlPorts(forward.child, [echoPort, identityPort])
                    #expect(try identity(try #require(ports[identityPort])) == pod.identity, "kubectl \(mode.name) to \(pod.name)")
                    let big = modeIndex == 0 && index == 1
                    try expectEcho(try #require(ports[echoPort]), size: big ? 64 * mebibyte : 4 * mebibyte, "kubectl \(mode.name) to \(pod.name)")
                    // Concurrent connections on one kubectl session.
                    var flows = try (0..<10).map { _ in
                        Flow(fd: try Net.connect("127.0.0.1", try #require(ports[echoPort])), payload: Net.randomBytes(64 * 1024))
                    }
                    defer { for flow in flows { close(flow.fd) } }
                    try Net.exchange(&flows, timeout: 30)
                    for (number, flow) in flows.enumerated() {
                        #expect(flow.error == nil && Net.same(flow.received, flow.payload),
                                "kubectl \(mode.name) to \(pod.name), connection \(number): \(flow.error ?? Net.firstDifference(flow.received, flow.payload))")
                    }
                    #expect(forward.child.isRunning, "\(forward.child.output)")
                    forward.child.kill()
                }
                // A refused port: kubectl says so (from the error stream) and ends its session.
                let pod = cluster.nodes[2].pods[1]
                let refused = try cluster.kubectlForward(gateway, ["pod/\(pod.name)", "0:\(refusedPort)"], environment: mode.environment)
                let fd = try Net.connect("127.0.0.1", refused.port)
                _ = Net.readUntilClosed(fd, timeout: 10)
                close(fd)
                let said = try refused.child.waitFor("kubectl's error line") { text in
                    text.contains("an error occurred forwarding") ? text : nil
                }
                #expect(said.contains("connection refused"), "kubectl \(mode.name): \(said)")
                refused.child.kill()
            }
            let missing = try Kubectl.run(["port-forward", "pod/nosuchpod", "0:\(echoPort)"], relay: gateway, scene: cluster.scene)
            #expect(missing.status == 1, "\(missing)")
            #expect(missing.stderr.contains(#"Error from server (NotFound): pods "nosuchpod" not found"#), "\(missing)")
            // Each mode was the one asked for (the gateway logs each upgrade with -v), and kubectl
            // reads each pod's node from the gateway.
            let log = gateway.child.stderr
            for node in cluster.nodes {
                for (index, expected) in ["SPDY/3.1 in a WebSocket", "SPDY/3.1"].enumerated() {
                    let line = "port-forward from 127.0.0.1: \(expected) for pod default/\(node.pods[index].name)"
                    #expect(log.contains(line), "no \(line.debugDescription) in the gateway's log:\n\(log)")
                }
                let placed = try Kubectl.run(["get", "pod", node.pods[0].name, "-o", "jsonpath={.spec.nodeName}"], relay: gateway, scene: cluster.scene)
                #expect(placed.status == 0 && placed.stdout == node.name, "\(node.pods[0].name): \(placed)")
            }
            #expect(!log.contains("/portforward from 127.0.0.1: 501"), "kubectl fell back from the WebSocket tunnel:\n\(log)")
            #expect(gateway.child.isRunning, "\(gateway.child.output)")
        }
    }

    @Test("The official Python client through the gateway to a pod on each node: data intact, a refused port on its error channel, a 404")
    func pythonClient() throws {
        try Peers.require()
        try Peers.requireKubernetesClient()
        let script = E2E.packageRoot + "/Tests/Peers/k8sclient.py"
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            for (index, node) in cluster.nodes.enumerated() {
                let pod = node.pods[1]
                let size = index == 0 ? 4 * mebibyte : mebibyte
                let run = try E2E.run([Peers.python, script, gateway.url, "default", pod.name, "\(echoPort),\(refusedPort)", "\(size)"],
                                      timeout: 90, directory: cluster.scene.directory)
                #expect(run.stdout.contains("phase Running"), "\(pod.name): \(run)")
                #expect(run.stdout.contains("ok \(echoPort) \(size)"), "\(pod.name): \(run)")
                // "error PORT REASON" or "mismatch PORT 0 error: REASON", as the client's error channel tells it.
                let refused = run.stdout.split(separator: "\n").first { $0.contains(" \(refusedPort) ") }
                #expect(refused?.contains("connection refused") == true, "\(pod.name): \(run)")
            }
            let missing = try E2E.run([Peers.python, script, gateway.url, "default", "nosuchpod", "\(echoPort)", "1024"],
                                      timeout: 60, directory: cluster.scene.directory)
            #expect(missing.status == 2 && missing.stdout.contains("api error 404"), "\(missing)")
            for node in cluster.nodes {
                let line = "port-forward from 127.0.0.1: v4.channel.k8s.io for pod default/\(node.pods[1].name)"
                #expect(gateway.child.stderr.contains(line), "no \(line.debugDescription) in the gateway's log:\n\(gateway.child.stderr)")
                // The pod the client read is the one on that node.
                let read = try cluster.get(gateway, "/api/v1/namespaces/default/pods/\(node.pods[1].name)")
                #expect(read.code == 200 && read.body.contains(#""nodeName":"\#(node.name)""#), "\(read)")
            }
            #expect(gateway.child.isRunning)
        }
    }

    @Test("100 concurrent connections through the gateway, spread over the three nodes, each intact")
    func concurrent() throws {
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            // One client per node, one on each path.
            let extras: [[String]] = [[], ["--node", "node-b"], ["--api-path"]]
            let forwarders = try zip(cluster.nodes, extras).map { node, extra in
                try cluster.forward(gateway.url, pod: node.pods[0].name, ports: [echoPort], extra: extra)
            }
            var flows: [Flow] = []
            defer { for flow in flows { close(flow.fd) } }
            for index in 0..<100 {
                var payload = Array("connection \(index):".utf8)
                payload += Net.randomBytes(48 * 1024 + index * 331)
                flows.append(Flow(fd: try Net.connect("127.0.0.1", try forwarders[index % 3].local(echoPort)), payload: payload))
            }
            try Net.exchange(&flows, timeout: 90)
            for (index, flow) in flows.enumerated() {
                #expect(flow.error == nil, "connection \(index): \(flow.error ?? "")")
                #expect(Net.same(flow.payload, flow.received), "connection \(index) (\(cluster.nodes[index % 3].name)): \(Net.firstDifference(flow.payload, flow.received))")
            }
            for forwarder in forwarders { #expect(forwarder.child.isRunning, "\(forwarder.child.output)") }
            #expect(gateway.child.isRunning)
        }
    }

    @Test("The seed path: the right node reaches the pod; a wrong node or an unknown node is 404; the node path by name alone")
    func seedPath() throws {
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            let pod = try cluster.pod("web-b")
            let payload = Net.randomBytes(mebibyte)
            var answer = try cluster.h2Forward("\(gateway.url)/proxy/nodes/node-b/portForward/default/web-b", port: identityPort, body: [])
            #expect(answer.code == 200 && String(decoding: answer.body, as: UTF8.self) == pod.identity, "\(answer)")
            answer = try cluster.h2Forward("\(gateway.url)/proxy/nodes/node-b/portForward/default/web-b", port: echoPort, body: payload)
            #expect(answer.code == 200 && Net.same(answer.body, payload), "right node: \(answer.code) \(Net.firstDifference(answer.body, payload))")
            // The node path and the Kubernetes path, by name alone.
            for path in ["/portForward/default/web-b", "/api/v1/namespaces/default/pods/web-b/portforward"] {
                answer = try cluster.h2Forward(gateway.url + path, port: identityPort, body: [])
                #expect(answer.code == 200 && String(decoding: answer.body, as: UTF8.self) == pod.identity, "\(path): \(answer)")
            }

            // The wrong node: 404, with a one-line reason.
            for path in ["/proxy/nodes/node-a/portForward/default/web-b", "/proxy/nodes/node-c/portForward/default/web-b",
                         "/proxy/nodes/node-z/portForward/default/web-b", "/proxy/nodes/node-b/portForward/default/web-a",
                         "/proxy/nodes/node-b/portForward/default/nosuchpod", "/portForward/default/nosuchpod"] {
                answer = try cluster.h2Forward(gateway.url + path, port: echoPort, body: Array("x".utf8))
                let text = String(decoding: answer.body, as: UTF8.self)
                #expect(answer.code == 404, "\(path): \(answer.code) \(text)")
                #expect(text.hasSuffix("\n") && text.split(separator: "\n").count == 1, "\(path): \(text.debugDescription)")
            }

            // Our client: the right node forwards, the wrong node ends it at start.
            let right = try cluster.forward(gateway.url, pod: "web-b", ports: [identityPort], extra: ["--node", "node-b"])
            #expect(try identity(try right.local(identityPort)) == pod.identity)
            let wrong = try E2E.run(["env", "-u", "KUBECONFIG", "HOME=\(cluster.scene.directory)", E2E.binary, "forward",
                                     "--server", gateway.url, "--io", E2E.io, "--node", "node-a", "--pod-running-timeout", "2s",
                                     "web-b", ":\(identityPort)"], timeout: 20, directory: cluster.scene.directory)
            #expect(wrong.status != 0, "\(wrong)")
            // One line from the gateway's 404 (which words is the gateway's choice), no forwarding.
            let said = wrong.stdout + wrong.stderr
            #expect(said.hasPrefix("error: ") && (said.contains("web-b") || said.contains("node-a")), "\(wrong)")
            #expect(!said.contains("Forwarding from"), "\(wrong)")
            #expect(gateway.child.isRunning)
        }
    }

    @Test("The pod API through the gateway: all six pods with their nodes (kubectl get pods -o wide, the raw list), one pod, NotFound; SIGTERM drains and exits, and our client, told GOAWAY, opens new connections on a new gateway at once while the old stream goes on")
    func podAPI() throws {
        try Kubectl.require(Kubectl.versioned)
        try withCluster { cluster in
            let gateway = try cluster.startGateway(extra: ["--shutdown-timeout", "60"])
            let expected = cluster.nodes.flatMap { node in node.pods.map { "\($0.name) \(node.name) Running" } }.sorted()

            let raw = try cluster.get(gateway, "/api/v1/namespaces/default/pods")
            #expect(raw.code == 200, "\(raw)")
            let rows = try Cluster.podRows(raw.body).map { "\($0.name) \($0.node) \($0.phase)" }
            #expect(rows.sorted() == expected, "\(rows)")
            let all = try cluster.get(gateway, "/api/v1/pods")
            let allRows = try Cluster.podRows(all.body).map { "\($0.name) \($0.node) \($0.phase)" }
            #expect(all.code == 200 && allRows.sorted() == expected, "\(all)")

            let columns = try Kubectl.run(["get", "pods", "--no-headers", "-o",
                                           "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,STATUS:.status.phase"],
                                          relay: gateway, scene: cluster.scene)
            #expect(columns.status == 0, "\(columns)")
            let lines = columns.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
            #expect(lines.sorted() == expected, "\(columns)")

            let wide = try Kubectl.run(["get", "pods", "-o", "wide"], relay: gateway, scene: cluster.scene)
            #expect(wide.status == 0, "\(wide)")
            for pod in cluster.nodes.flatMap(\.pods) {
                #expect(wide.stdout.split(separator: "\n").contains { $0.hasPrefix(pod.name + " ") }, "\(pod.name) is not in kubectl get pods -o wide:\n\(wide.stdout)")
            }
            // kubectl asks for a server-side Table (Accept: ...;as=Table;g=meta.k8s.io): -o wide
            // shows each pod's node.
            let nodesShown = cluster.nodes.flatMap(\.pods).allSatisfy { pod in
                wide.stdout.split(separator: "\n").first { $0.hasPrefix(pod.name + " ") }?.contains(" \(pod.node) ") == true
            }
            #expect(wide.stdout.contains(" NODE ") && nodesShown, "\(wide.stdout)")

            let node = try Kubectl.run(["get", "pod", "db-c", "-o", "jsonpath={.spec.nodeName} {.status.phase}"], relay: gateway, scene: cluster.scene)
            #expect(node.status == 0 && node.stdout == "node-c Running", "\(node)")
            let missing = try Kubectl.run(["get", "pod", "nosuchpod"], relay: gateway, scene: cluster.scene)
            #expect(missing.status == 1, "\(missing)")
            #expect(missing.stderr.trimmingCharacters(in: .whitespacesAndNewlines) == #"Error from server (NotFound): pods "nosuchpod" not found"#, "\(missing)")

            // The gateway said each node is reachable, with its pod count.
            for node in cluster.nodes {
                #expect(gateway.child.stdout.contains("node \(node.name) reachable at \(node.endpoint) (2 pods)"), "\(gateway.child.stdout)")
            }
            #expect(gateway.child.stdout.contains("(3 nodes"), "\(gateway.child.stdout)")

            // SIGTERM drains: the stream open at that moment still carries bytes both ways; once it
            // ends, the gateway exits 0; the client was told (GOAWAY) and says it lost the session.
            let forwarder = try cluster.forward(gateway.url, pod: "web-a", ports: [echoPort])
            let open = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            var closed = false
            defer { if !closed { close(open) } }
            let first = Net.randomBytes(256 * 1024)
            var flows = [Flow(fd: open, payload: first)]
            try Net.exchange(&flows, timeout: 30)
            #expect(Net.same(flows[0].received, first), "before SIGTERM: \(Net.firstDifference(flows[0].received, first))")
            kill(gateway.child.pid, SIGTERM)
            _ = try gateway.child.waitFor("the gateway's Draining line", timeout: 5) { $0.contains("Draining") ? true : nil }
            let second = Net.randomBytes(256 * 1024)
            flows = [Flow(fd: open, payload: second)]
            try Net.exchange(&flows, timeout: 30)
            #expect(flows[0].error == nil && Net.same(flows[0].received, second),
                    "the stream open at SIGTERM, while draining: \(flows[0].error ?? Net.firstDifference(flows[0].received, second))")
            #expect(gateway.child.isRunning, "the gateway did not wait for the open stream")
            // The client heard the GOAWAY: it says so, and dials a new session at once. A new
            // gateway on the same port (the draining one closed its listener): new local
            // connections go there within seconds, while the old stream still flows on the old.
            _ = try forwarder.child.waitFor("the client's \"is going away\" line", timeout: 10) { text in
                text.contains("Relay at \(gateway.url) is going away") ? true : nil
            }
            let successor = try cluster.startGateway(listen: "127.0.0.1:\(gateway.port)")
            _ = try forwarder.child.waitFor("the client's \"Reconnected\" line", timeout: 10) { text in
                text.contains("Reconnected to relay at") ? true : nil
            }
            let fresh = Net.randomBytes(64 * 1024)
            #expect(Net.same(try Net.echo("127.0.0.1", try forwarder.local(echoPort), fresh, halfClose: true, timeout: 15), fresh),
                    "a new connection after the GOAWAY")
            let third = Net.randomBytes(64 * 1024)
            flows = [Flow(fd: open, payload: third)]
            try Net.exchange(&flows, timeout: 30)
            #expect(flows[0].error == nil && Net.same(flows[0].received, third), "the old stream after the new session came up")
            let stopping = Date()
            close(open)
            closed = true
            let status = gateway.child.wait(timeout: 15)
            let seconds = Date().timeIntervalSince(stopping)
            #expect(status == 0, "the gateway's exit status after SIGTERM: \(String(describing: status))\n\(gateway.child.output)")
            #expect(seconds < 3, "the gateway exited \(seconds) s after its last stream ended (--shutdown-timeout is 60 s here)")
            #expect(!forwarder.child.stderr.contains("Lost connection"), "a GOAWAY is not a lost session: \(forwarder.child.stderr)")
            #expect(!forwarder.child.stderr.contains("reset"), "no connection was reset: \(forwarder.child.stderr)")
            successor.child.kill()
            for node in cluster.nodes { #expect(node.relay?.isRunning == true, "\(node.name)'s relay ended with the gateway") }
        }
    }

    @Test("A node relay killed: the gateway says so, its pods are Unknown, new streams to them fail at once with a clear line, the other nodes go on; restarted, it is served again within 2 s")
    func nodeDown() throws {
        try Kubectl.require(Kubectl.versioned)
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            let nodeA = try cluster.node("node-a")
            let toA = try cluster.forward(gateway.url, pod: "web-a", ports: [echoPort, identityPort])
            let toB = try cluster.forward(gateway.url, pod: "web-b", ports: [echoPort, identityPort])
            let toC = try cluster.forward(gateway.url, pod: "db-c", ports: [echoPort, identityPort], extra: ["--node", "node-c"])
            #expect(try identity(try toA.local(identityPort)) == "web-a on node-a\n")
            // A kubectl session to web-a from before the kill: its next connection is refused on
            // the error stream.
            let kubectlToA = try cluster.kubectlForward(gateway, ["pod/db-a", "0:\(identityPort)"])
            #expect(try identity(kubectlToA.port) == "db-a on node-a\n")

            // A stream to node-b open across the kill: half its bytes before, half after.
            let open = try Net.connect("127.0.0.1", try toB.local(echoPort))
            defer { close(open) }
            let before = Net.randomBytes(mebibyte)
            var flows = [Flow(fd: open, payload: before)]
            try Net.exchange(&flows, timeout: 30)
            #expect(Net.same(flows[0].received, before), "before the kill: \(Net.firstDifference(flows[0].received, before))")

            // And one to node-a: it must end (not hang) when node-a's relay dies.
            let doomed = try Net.connect("127.0.0.1", try toA.local(echoPort))
            defer { close(doomed) }
            flows = [Flow(fd: doomed, payload: Array("ping".utf8))]
            try Net.exchange(&flows, timeout: 30)
            #expect(flows[0].received == Array("ping".utf8))

            cluster.killRelay(nodeA)
            let killed = Date()
            let ended = Net.readUntilClosed(doomed, timeout: 10)
            #expect(ended.outcome == "reset" && ended.bytes == 0,
                    "the stream open to node-a when its relay died: \(ended) after \(Date().timeIntervalSince(killed)) s")
            // The client names it, as a connection a lost session resets.
            _ = try toA.child.waitFor("the client's line for the reset connection", timeout: 10) { text in
                text.contains("Connection for port \(echoPort) reset by the relay (") ? true : nil
            }
            let down = try gateway.child.waitFor("the gateway's line \"node node-a unreachable at \(nodeA.endpoint): ...\"", timeout: 10) { text in
                text.split(separator: "\n").first { $0.hasPrefix("node node-a unreachable at \(nodeA.endpoint): ") }.map(String.init)
            }
            #expect(down.count > "node node-a unreachable at \(nodeA.endpoint): ".count, "no reason: \(down)")

            // Its pods are Unknown; the others Running.
            let list = try cluster.get(gateway, "/api/v1/namespaces/default/pods")
            let phases = try Cluster.podRows(list.body).map { "\($0.name) \($0.node) \($0.phase)" }.sorted()
            #expect(phases == ["db-a node-a Unknown", "db-b node-b Running", "db-c node-c Running",
                               "web-a node-a Unknown", "web-b node-b Running", "web-c node-c Running"], "\(list)")

            // A new stream to one of its pods fails at once (not after a connect timeout), with a line naming the node.
            let started = Date()
            let fd = try Net.connect("127.0.0.1", try toA.local(echoPort))
            let closed = Net.readUntilClosed(fd, timeout: 15)
            close(fd)
            let seconds = Date().timeIntervalSince(started)
            #expect(["eof", "reset"].contains(closed.outcome) && closed.bytes == 0, "\(closed)")
            #expect(seconds < 5, "the stream to a pod on the dead node took \(seconds) s to fail")
            let prefix = "error: forwarding port \(echoPort) to pod default/web-a: "
            let line = try toA.child.waitFor("the line \"\(prefix)...\"", timeout: 10) { text in
                text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
            }
            #expect(line.contains("node-a") && line.contains("unreachable"), "\(line)")
            let raw = try cluster.h2Forward("\(gateway.url)/portForward/default/db-a", port: echoPort, body: Array("x".utf8))
            let text = String(decoding: raw.body, as: UTF8.self)
            #expect(raw.code == 503 && text.hasSuffix("\n") && text.split(separator: "\n").count == 1, "\(raw.code) \(text.debugDescription)")
            let kubectl = try Kubectl.run(["port-forward", "pod/web-a", "0:\(echoPort)"], relay: gateway, scene: cluster.scene, timeout: 20)
            #expect(kubectl.status == 1 && kubectl.stderr.contains("pod is not running. Current status=Unknown"), "\(kubectl)")
            let refusedFd = try Net.connect("127.0.0.1", kubectlToA.port)
            _ = Net.readUntilClosed(refusedFd, timeout: 10)
            close(refusedFd)
            let kubectlSaid = try kubectlToA.child.waitFor("kubectl's error line") { text in
                text.contains("an error occurred forwarding") ? text : nil
            }
            #expect(kubectlSaid.contains("node-a") && kubectlSaid.contains("unreachable"), "\(kubectlSaid)")

            // The other nodes: the open stream goes on intact, new streams work.
            let after = Net.randomBytes(mebibyte)
            flows = [Flow(fd: open, payload: after)]
            try Net.exchange(&flows, timeout: 30)
            #expect(Net.same(flows[0].received, after), "the stream open across the kill: \(Net.firstDifference(flows[0].received, after))")
            #expect(try identity(try toB.local(identityPort)) == "web-b on node-b\n")
            #expect(try identity(try toC.local(identityPort)) == "db-c on node-c\n")
            let payload = Net.randomBytes(4 * mebibyte)
            let echoed = try Net.echo("127.0.0.1", try toC.local(echoPort), payload)
            #expect(Net.same(echoed, payload), "node-c after the kill: \(Net.firstDifference(echoed, payload))")

            // Restarted on the same address: served again within 2 s of its "Relay listening" line.
            let listening = try cluster.startRelay(nodeA)
            var served: Date?
            var attempts: [String] = []
            while served == nil && Date().timeIntervalSince(listening) < 10 {
                let said = try identity(try toA.local(identityPort), timeout: 5)
                if said == "web-a on node-a\n" { served = Date() } else { attempts.append(said); usleep(50_000) }
            }
            let delay = try #require(served, "web-a was not served within 10 s of its relay's restart (\(attempts.count) attempts)\n\(gateway.child.output)")
                .timeIntervalSince(listening)
            #expect(delay < 2, "served again \(delay) s after the relay listened")
            try expectEcho(try toA.local(echoPort), size: mebibyte, "web-a after the restart")
            _ = try gateway.child.waitFor("the gateway's line \"node node-a reachable ...\" again", timeout: 5) { text in
                text.components(separatedBy: "node node-a reachable at \(nodeA.endpoint) (2 pods)").count >= 3 ? true : nil
            }
            let again = try cluster.get(gateway, "/api/v1/namespaces/default/pods/web-a")
            #expect(again.code == 200 && again.body.contains(#""phase":"Running""#), "\(again)")
            for forwarder in [toA, toB, toC] { #expect(forwarder.child.isRunning, "\(forwarder.child.output)") }
            #expect(gateway.child.isRunning)
        }
    }

    @Test("A node down when the gateway starts: the gateway is ready anyway and says so; the seed path to it is 503; once the node relay starts, it is served within 2 s")
    func nodeDownAtStart() throws {
        try withCluster { cluster in
            let nodeC = try cluster.node("node-c")
            cluster.killRelay(nodeC)
            let gateway = try cluster.startGateway()
            #expect(gateway.child.stdout.contains("node node-c unreachable at \(nodeC.endpoint): "), "\(gateway.child.output)")
            #expect(gateway.child.stdout.contains("(3 nodes, 2 reachable"), "\(gateway.child.output)")
            let list = try cluster.get(gateway, "/api/v1/namespaces/default/pods")
            let names = try Cluster.podRows(list.body).map(\.name).sorted()
            #expect(names == ["db-a", "db-b", "web-a", "web-b"], "\(list)")
            let seed = try cluster.h2Forward("\(gateway.url)/proxy/nodes/node-c/portForward/default/web-c", port: identityPort, body: [])
            let text = String(decoding: seed.body, as: UTF8.self)
            // The gateway cannot know the pods of a node it never reached: a request naming that
            // node is "unreachable" (503), not "no such pod" (404, which ends our client for good).
            #expect(seed.code == 503 && text.contains("node-c") && text.split(separator: "\n").count == 1, "\(seed.code) \(text.debugDescription)")

            let listening = try cluster.startRelay(nodeC)
            var answer: (code: Int, body: [UInt8], stderr: String) = (0, [], "")
            while Date().timeIntervalSince(listening) < 10 {
                answer = try cluster.h2Forward("\(gateway.url)/portForward/default/web-c", port: identityPort, body: [])
                if answer.code == 200 { break }
                usleep(50_000)
            }
            let delay = Date().timeIntervalSince(listening)
            #expect(answer.code == 200 && String(decoding: answer.body, as: UTF8.self) == "web-c on node-c\n", "\(answer)")
            #expect(delay < 2, "web-c served \(delay) s after its relay listened")
            #expect(gateway.child.stdout.contains("node node-c reachable at \(nodeC.endpoint) (2 pods)"), "\(gateway.child.output)")
        }
    }

    @Test("A node host that goes silent (its link down, no reset): new streams to it fail within the connect timeout, the gateway gives it up by keepalive, the others go on; its link back up, it is served again")
    func silentNode() throws {
        try withCluster { cluster in
            let gateway = try cluster.startGateway()
            let nodeB = try cluster.node("node-b")
            let toB = try cluster.forward(gateway.url, pod: "db-b", ports: [identityPort])
            #expect(try identity(try toB.local(identityPort)) == "db-b on node-b\n")

            // The bridge port goes down: packets to node-b are dropped, nothing is reset.
            let down = try E2E.run(["ip", "link", "set", nodeB.hostVeth, "down"], timeout: 10, directory: cluster.scene.directory)
            #expect(down.status == 0, "\(down)")
            let silent = Date()
            let started = Date()
            let said = try identity(try toB.local(identityPort), timeout: 20)
            let seconds = Date().timeIntervalSince(started)
            #expect(said.isEmpty || said.hasPrefix("<"), "\(said)")
            // --connect-timeout 5 s: "for a node relay's connection, and for its answer to a stream".
            #expect(seconds < 7, "a stream to the silent node took \(seconds) s to fail")
            let prefix = "error: forwarding port \(identityPort) to pod default/db-b: "
            let line = try toB.child.waitFor("the line \"\(prefix)...\"", timeout: 10) { text in
                text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
            }
            #expect(line.contains("node-b"), "\(line)")
            // The other nodes meanwhile.
            let other = try cluster.h2Forward("\(gateway.url)/portForward/default/web-c", port: identityPort, body: [])
            #expect(other.code == 200 && String(decoding: other.body, as: UTF8.self) == "web-c on node-c\n", "\(other)")
            // Keepalive (PING after 5 s of silence, 5 s for the answer): given up within ~10 s.
            _ = try gateway.child.waitFor("the gateway's line \"node node-b unreachable ...\"", timeout: 15) { text in
                text.contains("node node-b unreachable at \(nodeB.endpoint): ") ? true : nil
            }
            let noticed = Date().timeIntervalSince(silent)
            #expect(noticed < 12, "the gateway noticed the silent node after \(noticed) s")
            let pod = try cluster.get(gateway, "/api/v1/namespaces/default/pods/db-b")
            #expect(pod.body.contains(#""phase":"Unknown""#), "\(pod)")

            let up = try E2E.run(["ip", "link", "set", nodeB.hostVeth, "up"], timeout: 10, directory: cluster.scene.directory)
            #expect(up.status == 0, "\(up)")
            let back = Date()
            var again = ""
            while Date().timeIntervalSince(back) < 10 {
                again = try identity(try toB.local(identityPort), timeout: 7)
                if again == "db-b on node-b\n" { break }
                usleep(100_000)
            }
            #expect(again == "db-b on node-b\n")
            let delay = Date().timeIntervalSince(back)
            #expect(delay < 3, "served again \(delay) s after the link came back")
            #expect(gateway.child.isRunning && toB.child.isRunning)
        }
    }

    @Test("The same pod name on two nodes: listed twice; a read or a port-forward by name alone is 409 naming both nodes; the seed path reaches each")
    func duplicateName() throws {
        try Kubectl.require(Kubectl.versioned)
        try withCluster(layout: [("node-a", ["web-a", "twin"]), ("node-b", ["twin"])]) { cluster in
            let gateway = try cluster.startGateway()
            let list = try cluster.get(gateway, "/api/v1/namespaces/default/pods")
            let rows = try Cluster.podRows(list.body).map { "\($0.name) \($0.node) \($0.phase)" }.sorted()
            #expect(rows == ["twin node-a Running", "twin node-b Running", "web-a node-a Running"], "\(list)")

            let read = try cluster.get(gateway, "/api/v1/namespaces/default/pods/twin")
            #expect(read.code == 409, "\(read)")
            #expect(read.body.contains(#""kind":"Status""#) && read.body.contains("node-a") && read.body.contains("node-b"), "\(read)")

            for path in ["/portForward/default/twin", "/api/v1/namespaces/default/pods/twin/portforward"] {
                let answer = try cluster.h2Forward(gateway.url + path, port: identityPort, body: [])
                let text = String(decoding: answer.body, as: UTF8.self)
                #expect(answer.code == 409 && text.contains("node-a") && text.contains("node-b"), "\(path): \(answer.code) \(text)")
            }
            for node in ["node-a", "node-b"] {
                let answer = try cluster.h2Forward("\(gateway.url)/proxy/nodes/\(node)/portForward/default/twin", port: identityPort, body: [])
                #expect(answer.code == 200 && String(decoding: answer.body, as: UTF8.self) == "twin on \(node)\n", "\(node): \(answer)")
            }

            // kubectl reads the pod first: the conflict, in its words.
            let kubectl = try Kubectl.run(["port-forward", "pod/twin", "0:\(echoPort)"], relay: gateway, scene: cluster.scene, timeout: 20)
            #expect(kubectl.status == 1 && kubectl.stderr.contains("Error from server (Conflict)"), "\(kubectl)")
            #expect(kubectl.stderr.contains("node-a") && kubectl.stderr.contains("node-b"), "\(kubectl)")

            // Our client by name alone: the conflict, naming both nodes, and no forwarding.
            let started = Date()
            let alone = try E2E.run(["env", "-u", "KUBECONFIG", "HOME=\(cluster.scene.directory)", E2E.binary, "forward",
                                     "--server", gateway.url, "--io", E2E.io, "--pod-running-timeout", "2s", "twin", ":\(echoPort)"],
                                    timeout: 30, directory: cluster.scene.directory)
            let seconds = Date().timeIntervalSince(started)
            #expect(alone.status != 0 && alone.stderr.contains("node-a") && alone.stderr.contains("node-b"), "\(alone)")
            #expect(!alone.stdout.contains("Forwarding from"), "\(alone)")
            // A conflict does not pass by waiting: it ends the client at once (refused at the
            // upgrade), as kubectl ends, not after --pod-running-timeout.
            #expect(seconds < 1.9 && !alone.stderr.contains("Waiting up to"), "\(seconds) s: \(alone.stderr)")

            // Our client naming the node reaches that twin: it reads the pod with a field selector
            // on its name and node (a read by name alone is the 409).
            let forwarder = try cluster.forward(gateway.url, pod: "twin", ports: [identityPort, echoPort],
                                                extra: ["--node", "node-b", "--pod-running-timeout", "2s"])
            #expect(try identity(try forwarder.local(identityPort)) == "twin on node-b\n")
            let payload = Net.randomBytes(mebibyte)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
            #expect(Net.same(echoed, payload), "\(Net.firstDifference(echoed, payload))")
            #expect(gateway.child.isRunning)
        }
    }
}
