import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// A cluster on one machine, for the gateway's end-to-end tests: node hosts are network namespaces
// joined by veth pairs to one Linux bridge in the root namespace (the gateway's side, at .1 of a
// private /24 that nothing on the machine uses). Each node runs a node relay on ADDRESS:10250 in
// its namespace, with pods that are network namespaces of their own (an echo server on 7000, and
// on 7005 a server that says which pod on which node it is). The gateway runs in the root
// namespace on 127.0.0.1. Interfaces are named `pf` + a role + a random suffix (at most 15
// characters), namespaces `pf-e2e-SUFFIX-...`: parallel runs never collide. `withCluster` tears
// everything down (processes, namespaces, veths, the bridge), also on failure, and records an
// issue if anything is left.

/// The pod port on which every cluster pod says who it is: "POD on NODE\n", then closes.
let identityPort = 7005

/// The node relays' port, on each node's own address.
let nodeRelayPort = 10250

struct ClusterPod {
    let name: String
    let node: String
    let namespace: PodNamespace
    /// What the pod's identity port answers.
    var identity: String { "\(name) on \(node)\n" }
}

final class ClusterNode: @unchecked Sendable {
    let name: String
    /// The node host's network namespace.
    let netns: String
    /// The root namespace's end of its veth pair (a port of the bridge).
    let hostVeth: String
    let address: String
    let podsFile: String
    var pods: [ClusterPod]
    /// The running node relay (nil once killed and not restarted).
    var relay: Child?
    var endpoint: String { "\(address):\(nodeRelayPort)" }
    var url: String { "http://\(endpoint)" }
    /// The relay as the harness's helpers (Kubectl, startForwarder) take a server.
    var relayProcess: RelayProcess? { relay.map { RelayProcess(child: $0, host: address, port: nodeRelayPort) } }

    init(name: String, netns: String, hostVeth: String, address: String, podsFile: String, pods: [ClusterPod]) {
        self.name = name
        self.netns = netns
        self.hostVeth = hostVeth
        self.address = address
        self.podsFile = podsFile
        self.pods = pods
    }
}

final class Cluster: @unchecked Sendable {
    let scene: Scene
    let suffix: String
    /// The third octet: the cluster's network is 10.213.SUBNET.0/24.
    let subnet: Int
    let bridge: String
    private(set) var nodes: [ClusterNode] = []
    private(set) var gateway: RelayProcess?
    private var links: [String] = []
    private var namespaceNames: [String] = []

    /// Three nodes, two pods each.
    static let standard: [(node: String, pods: [String])] = [
        ("node-a", ["web-a", "db-a"]), ("node-b", ["web-b", "db-b"]), ("node-c", ["web-c", "db-c"]),
    ]

    var gatewayAddress: String { "10.213.\(subnet).1" }

    init(scene: Scene) throws {
        self.scene = scene
        // Letters and digits only, 6 of them: "pfbr" + 6 = 10 characters, under IFNAMSIZ.
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        suffix = String((0..<6).map { _ in alphabet.randomElement()! })
        subnet = try Self.freeSubnet(directory: scene.directory)
        bridge = "pfbr\(suffix)"
    }

    /// A 10.213.N.0/24 that no address or route on this machine touches.
    private static func freeSubnet(directory: String) throws -> Int {
        let addresses = try E2E.run(["ip", "-o", "addr"], timeout: 10, directory: directory).stdout
        let routes = try E2E.run(["ip", "route", "show", "table", "all"], timeout: 10, directory: directory).stdout
        let used = addresses + routes
        for candidate in (2...254).shuffled() where !used.contains("10.213.\(candidate).") {
            return candidate
        }
        throw HarnessError("no free 10.213.N.0/24 on this machine")
    }

    private func ip(_ arguments: [String]) throws {
        let result = try E2E.run(["ip"] + arguments, timeout: 10, directory: scene.directory)
        guard result.status == 0 else {
            throw HarnessError("ip \(arguments.joined(separator: " ")): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    /// The bridge, the node hosts with their veths and addresses, the pods with their servers,
    /// and a node relay on each node (started, listening). `layout` lists nodes and their pods.
    func build(layout: [(node: String, pods: [String])] = Cluster.standard) throws {
        precondition(layout.count <= 250)
        try ip(["link", "add", bridge, "type", "bridge"])
        links.append(bridge)
        try ip(["addr", "add", "\(gatewayAddress)/24", "dev", bridge])
        try ip(["link", "set", bridge, "up"])
        for (index, entry) in layout.enumerated() {
            let tag = String(UnicodeScalar(UInt8(ascii: "a") + UInt8(index % 26)))
            let netns = "pf-e2e-\(suffix)-\(entry.node)"
            _ = try scene.makeNamespace(named: netns)
            namespaceNames.append(netns)
            let hostVeth = "pfh\(tag)\(suffix)"
            let nodeVeth = "pfn\(tag)\(suffix)"
            try ip(["link", "add", hostVeth, "type", "veth", "peer", "name", nodeVeth])
            links.append(hostVeth)
            try ip(["link", "set", nodeVeth, "netns", netns])
            try ip(["link", "set", hostVeth, "master", bridge, "up"])
            let address = "10.213.\(subnet).\(index + 2)"
            try ip(["-n", netns, "addr", "add", "\(address)/24", "dev", nodeVeth])
            try ip(["-n", netns, "link", "set", nodeVeth, "up"])

            var pods: [ClusterPod] = []
            var yaml = "pods:\n"
            for pod in entry.pods {
                let namespace = try scene.makeNamespace(named: "pf-e2e-\(suffix)-\(entry.node)-\(pod)")
                namespaceNames.append(namespace.name)
                let clusterPod = ClusterPod(name: pod, node: entry.node, namespace: namespace)
                try scene.serve(in: namespace, port: echoPort)
                try scene.serve(in: namespace, port: identityPort,
                                address: "SYSTEM:echo \(clusterPod.name) on \(clusterPod.node)")
                pods.append(clusterPod)
                yaml += "  - {namespace: default, name: \(pod), netns: \(namespace.path), ports: [{name: echo, containerPort: \(echoPort)}]}\n"
            }
            let podsFile = "\(scene.directory)/pods-\(entry.node).yaml"
            try yaml.write(toFile: podsFile, atomically: true, encoding: .utf8)
            let node = ClusterNode(name: entry.node, netns: netns, hostVeth: hostVeth, address: address,
                                   podsFile: podsFile, pods: pods)
            nodes.append(node)
        }
        for node in nodes { _ = try startRelay(node) }
    }

    func node(_ name: String) throws -> ClusterNode {
        guard let node = nodes.first(where: { $0.name == name }) else { throw HarnessError("no node \(name) in the cluster") }
        return node
    }

    func pod(_ name: String, on nodeName: String? = nil) throws -> ClusterPod {
        for node in nodes where nodeName == nil || node.name == nodeName {
            if let pod = node.pods.first(where: { $0.name == name }) { return pod }
        }
        throw HarnessError("no pod \(name) in the cluster")
    }

    /// Starts (or restarts) the node's relay inside its namespace, on its address; returns when
    /// it printed "Relay listening on", with the moment that line was seen.
    @discardableResult
    func startRelay(_ node: ClusterNode, podsFile: String? = nil) throws -> Date {
        let child = try scene.start(["ip", "netns", "exec", node.netns, E2E.binary, "relay", "--listen", node.endpoint,
                                     "--node", node.name, "--pods", podsFile ?? node.podsFile, "--insecure",
                                     "--io", E2E.io, "-v"] + (E2E.copy?.arguments ?? []),
                                    name: "relay-\(node.name)")
        node.relay = child
        return try child.waitFor("the line \"Relay listening on \(node.endpoint)\"") { text -> Date? in
            text.contains("Relay listening on \(node.endpoint)") ? Date() : nil
        }
    }

    /// SIGKILL to the node's relay (`kill -9`): its sockets close, nothing is said.
    func killRelay(_ node: ClusterNode) {
        guard let relay = node.relay else { return }
        Glibc.kill(relay.pid, SIGKILL)
        _ = relay.wait(timeout: 5)
        node.relay = nil
    }

    /// The nodes file the gateway reads.
    func nodesFile() throws -> String {
        var yaml = "nodes:\n"
        for node in nodes { yaml += "  - {name: \(node.name), address: \(node.endpoint)}\n" }
        let path = "\(scene.directory)/nodes.yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `portforward gateway` in the root namespace on 127.0.0.1; returns once it printed
    /// "Gateway listening on 127.0.0.1:PORT".
    func startGateway(listen: String = "127.0.0.1:0", extra: [String] = []) throws -> RelayProcess {
        // PORTFORWARD_GATEWAY_STANDIN puts something else where the gateway goes, to see which
        // tests tell it apart from a gateway: `relay`, one plain relay (node e2e-node) on 127.0.0.1
        // serving all the cluster's pods (the tests about nodes must fail; the data paths pass);
        // a node's name, that node's relay on the bridge (pods of other nodes are 404: all fail).
        if let standIn = ProcessInfo.processInfo.environment["PORTFORWARD_GATEWAY_STANDIN"], !standIn.isEmpty {
            if let node = nodes.first(where: { $0.name == standIn }), let relay = node.relayProcess {
                gateway = relay
                return relay
            }
            guard standIn == "relay" else { throw HarnessError("PORTFORWARD_GATEWAY_STANDIN=\(standIn): expected relay or a node's name") }
            var yaml = "pods:\n"
            for pod in nodes.flatMap(\.pods) {
                yaml += "  - {namespace: default, name: \(pod.name), netns: \(pod.namespace.path), ports: [{name: echo, containerPort: \(echoPort)}]}\n"
            }
            let relay = try scene.startRelay(podsFile: yaml, connector: .native, extra: ["-v"])
            gateway = relay
            return relay
        }
        let child = try scene.start([E2E.binary, "gateway", "--listen", listen, "--nodes", try nodesFile(),
                                     "--io", E2E.io, "-v"] + (E2E.copy?.arguments ?? []) + extra, name: "gateway")
        let port = try child.waitFor("the line \"Gateway listening on 127.0.0.1:PORT\"", timeout: 30) { text -> Int? in
            guard let range = text.range(of: "Gateway listening on 127.0.0.1:") else { return nil }
            let digits = text[range.upperBound...].prefix { $0.isNumber }
            return text[range.upperBound...].dropFirst(digits.count).first == " " ? Int(digits) : nil
        }
        let process = RelayProcess(child: child, host: "127.0.0.1", port: port)
        gateway = process
        return process
    }

    /// Deletes the veths and the bridge (the namespaces are the scene's).
    func removeLinks() {
        for link in links.reversed() {
            _ = try? E2E.run(["ip", "link", "del", link], timeout: 10, directory: "/tmp")
        }
    }

    /// Interfaces and namespaces of this cluster still present.
    func leftovers() -> [String] {
        let links = (try? E2E.run(["ip", "-o", "link"], timeout: 10, directory: "/tmp").stdout) ?? ""
        let namespaces = (try? E2E.run(["ip", "netns", "list"], timeout: 10, directory: "/tmp").stdout) ?? ""
        var left: [String] = []
        for line in links.split(separator: "\n") where line.contains(suffix) { left.append("link: \(line)") }
        for line in namespaces.split(separator: "\n") where line.contains(suffix) { left.append("netns: \(line)") }
        return left
    }
}

/// Runs `body` with a built cluster (standard layout unless given) in a fresh scene; always tears
/// it all down, then checks that no interface or namespace of it is left.
func withCluster(layout: [(node: String, pods: [String])] = Cluster.standard, _ body: (Cluster) throws -> Void) throws {
    try E2E.requireEnvironment()
    let scene = try Scene()
    let cluster = try Cluster(scene: scene)
    do {
        try cluster.build(layout: layout)
        try body(cluster)
    } catch {
        Issue.record("\(error)\n--- logs ---\n\(scene.logs)")
    }
    scene.tearDown()
    cluster.removeLinks()
    // A namespace's veth goes when the kernel destroys the namespace, which can lag a moment.
    let deadline = Date().addingTimeInterval(5)
    var left = cluster.leftovers()
    while !left.isEmpty && Date() < deadline {
        usleep(50_000)
        left = cluster.leftovers()
    }
    #expect(left.isEmpty, "left behind by the cluster fixture: \(left)")
}

// MARK: clients

extension Cluster {
    /// `portforward forward` against `server` with no kubeconfig at all (HOME is the scene's
    /// directory, KUBECONFIG unset): without --node or --api-path it asks on the node path
    /// `/portForward/NS/POD`. Returns once every port printed its 127.0.0.1 Forwarding line.
    func forward(_ server: String, pod: String, ports: [Int], extra: [String] = []) throws -> ForwarderProcess {
        let child = try scene.start(["env", "-u", "KUBECONFIG", "-u", "PORTFORWARD_SERVER", "HOME=\(scene.directory)",
                                     E2E.binary, "forward", "--server", server, "--io", E2E.io]
                                    + (E2E.copy?.arguments ?? []) + extra + [pod] + ports.map { ":\($0)" },
                                    name: "forward-\(pod)")
        let lines = try child.waitFor("a \"Forwarding from 127.0.0.1\" line for every port") { text -> [String]? in
            let lines = text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("Forwarding from 127.0.0.1:") }
            return ports.allSatisfy { remote in lines.contains { $0.hasSuffix(" -> \(remote)") } } ? lines : nil
        }
        var local: [Int: Int] = [:]
        for line in lines {
            let parts = line.dropFirst("Forwarding from 127.0.0.1:".count).components(separatedBy: " -> ")
            if parts.count == 2, let port = Int(parts[0]), let remote = Int(parts[1]) { local[remote] = port }
        }
        return ForwarderProcess(child: child, localPorts: local, lines: lines)
    }

    /// `kubectl port-forward` (1.32) against `server`; returns it with the local port of the
    /// first forward. `environment` goes before kubectl (KUBECTL_PORT_FORWARD_WEBSOCKETS=false).
    func kubectlForward(_ server: RelayProcess, _ arguments: [String], environment: [String] = []) throws -> (child: Child, port: Int) {
        try Kubectl.portForward(arguments, environment: environment, server: server, scene: scene)
    }

    /// HTTP/2 with prior knowledge to `url` (a port-forward path), the `port` header, `body`
    /// sent: the status code and the answer's body.
    func h2Forward(_ url: String, port: Int, body: [UInt8], timeout: Double = 20) throws -> (code: Int, body: [UInt8], stderr: String) {
        let input = "\(scene.directory)/h2-in-\(E2E.randomSuffix())"
        let output = input.replacingOccurrences(of: "h2-in", with: "h2-out")
        try Data(body).write(to: URL(fileURLWithPath: input))
        defer { unlink(input); unlink(output) }
        let result = try E2E.run(["curl", "-sS", "--max-time", "\(Int(timeout))", "--http2-prior-knowledge", "-H", "port: \(port)",
                                  "--data-binary", "@\(input)", "-o", output, "-w", "%{http_code}", url],
                                 timeout: timeout + 10, directory: scene.directory)
        let answer = (try? Data(contentsOf: URL(fileURLWithPath: output))).map { [UInt8]($0) } ?? []
        return (Int(result.stdout) ?? -1, answer, result.stderr)
    }

    /// GET `path` on `server` over HTTP/1.1: the status code and the body.
    func get(_ server: RelayProcess, _ path: String) throws -> (code: Int, body: String) {
        let output = "\(scene.directory)/get-\(E2E.randomSuffix())"
        defer { unlink(output) }
        let result = try E2E.run(["curl", "-sS", "--max-time", "10", "-o", output, "-w", "%{http_code}", server.url + path],
                                 timeout: 20, directory: scene.directory)
        return (Int(result.stdout) ?? -1, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    /// The pods of a list answer: (name, nodeName, phase) per item, in order.
    static func podRows(_ json: String) throws -> [(name: String, node: String, phase: String)] {
        guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let items = object["items"] as? [[String: Any]] else {
            throw HarnessError("not a pod list: \(json.prefix(400))")
        }
        return items.map { item in
            let metadata = item["metadata"] as? [String: Any] ?? [:]
            let spec = item["spec"] as? [String: Any] ?? [:]
            let status = item["status"] as? [String: Any] ?? [:]
            return (metadata["name"] as? String ?? "?", spec["nodeName"] as? String ?? "?", status["phase"] as? String ?? "?")
        }
    }
}

/// What the pod's identity port says through a local forward: connects, sends nothing, reads
/// until the pod closes.
func identity(_ port: Int, timeout: Double = 15) throws -> String {
    let fd = try Net.connect("127.0.0.1", port)
    defer { close(fd) }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        var probe = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&probe, 1, 100) <= 0 { continue }
        let got = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        if got > 0 { received += buffer[..<got]; continue }
        if got == 0 { return String(decoding: received, as: UTF8.self) }
        if errno == EAGAIN || errno == EWOULDBLOCK { continue }
        return String(decoding: received, as: UTF8.self) + "<\(String(cString: strerror(errno)))>"
    }
    return String(decoding: received, as: UTF8.self) + "<still open after \(timeout) s>"
}
