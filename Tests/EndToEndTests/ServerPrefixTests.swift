import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// A server URL with a path (Rancher's https://rancher.example/k8s/clusters/c-abc): client-go puts
// the path in front of every request's, and so must our client, in every protocol.

/// How the request names the pod: the node's path, the pod subresource, the API server's proxy to a node.
enum PrefixRoute: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case node, apiPath, proxyNode
    var testDescription: String {
        switch self {
        case .node: "/portForward/..."
        case .apiPath: "--api-path"
        case .proxyNode: "--node"
        }
    }
    func arguments(_ scene: Scene) -> [String] {
        switch self {
        case .node: []
        case .apiPath: ["--api-path"]
        case .proxyNode: ["--node", scene.node]
        }
    }
    /// The port-forward request's path, after the prefix.
    func forwardPath(_ scene: Scene) -> String {
        switch self {
        case .node: "/portForward/default/web"
        case .apiPath: "/api/v1/namespaces/default/pods/web/portforward"
        case .proxyNode: "/proxy/nodes/\(scene.node)/portForward/default/web"
        }
    }
    /// The pod read's path, after the prefix.
    func podPath(_ scene: Scene) -> String {
        switch self {
        case .node, .apiPath: "/api/v1/namespaces/default/pods/web"
        case .proxyNode: "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb%2Cspec.nodeName%3D\(scene.node)"
        }
    }
}

extension Scene {
    /// `relay` served under `prefix` by Tests/Peers/prefixproxy.py, which takes the prefix off
    /// every request (and every h2 stream's :path) and refuses a request without it.
    func prefixed(_ relay: RelayProcess, prefix: String) throws -> (RelayProcess, Child) {
        let script = E2E.packageRoot + "/Tests/Peers/prefixproxy.py"
        let proxy = try start([Peers.python, script, relay.host, "\(relay.port)", prefix], name: "prefixproxy")
        let port = try proxy.waitFor("the line \"listening PORT\"") { text -> Int? in
            text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst("listening ".count)) }
        }
        return (RelayProcess(child: relay.child, host: "127.0.0.1", port: port, path: prefix), proxy)
    }
}

/// The request targets the proxy saw ("METHOD TARGET"; METHOD "h2" for a stream's :path).
private func requests(_ proxy: Child) -> [String] {
    proxy.stdout.split(separator: "\n").filter { $0.hasPrefix("request ") }.map { String($0.dropFirst("request ".count)) }
}

@Suite("End to end: a server URL with a path prefix, through a proxy that serves the relay under it", .serialized)
struct ServerPrefixTests {
    static let prefix = "/k8s/clusters/c-abc"

    @Test("Every request carries the prefix, and the data arrives intact",
          arguments: WireChoice.allCases, PrefixRoute.allCases)
    func throughPrefix(_ wire: WireChoice, _ route: PrefixRoute) throws {
        try Peers.require()
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native, extra: ["-v"])
            let (behind, proxy) = try scene.prefixed(relay, prefix: Self.prefix)
            let forwarder = try scene.startForwarder(relay: behind, pod: "web", remotePorts: [echoPort],
                                                     extra: wire.arguments + ["-v"] + route.arguments(scene))
            let payload = Net.randomBytes(mebibyte)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 60)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
            #expect(forwarder.child.stderr.contains("session to \(behind.url): \(wire.name)\n"), "\(forwarder.child.stderr)")

            let seen = requests(proxy)
            #expect(!seen.isEmpty && seen.allSatisfy { $0.split(separator: " ")[1].hasPrefix(Self.prefix + "/") }, "\(seen)")
            let forward = Self.prefix + route.forwardPath(scene)
            let pod = Self.prefix + route.podPath(scene)
            switch wire {
            case .h2:
                // The h2c upgrade names the target; the pod read and the stream go on the session.
                #expect(seen.first == "POST \(forward)", "\(seen)")
                #expect(seen.contains("h2 \(pod)") && seen.contains("h2 \(forward)"), "\(seen)")
            case .websocket:
                #expect(seen.contains("GET \(pod)") && seen.contains("GET \(forward)"), "\(seen)")
            case .spdy:
                #expect(seen.contains("GET \(pod)") && seen.contains("POST \(forward)"), "\(seen)")
            }
        }
    }

    @Test("--protocol auto through the prefix settles on h2 and forwards")
    func auto() throws {
        try Peers.require()
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native)
            let (behind, proxy) = try scene.prefixed(relay, prefix: Self.prefix + "/")
            let forwarder = try scene.startForwarder(relay: behind, pod: "web", remotePorts: [echoPort], extra: ["-v"])
            let payload = Net.randomBytes(256 * 1024)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 60)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
            #expect(forwarder.child.stderr.contains(": HTTP/2\n"), "\(forwarder.child.stderr)")
            #expect(requests(proxy).allSatisfy { $0.contains(" \(Self.prefix)/") }, "\(requests(proxy))")
        }
    }

    @Test("portforward bench --server URL with a path: its h2 streams carry the prefix")
    func bench() throws {
        try Peers.require()
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native)
            let (behind, proxy) = try scene.prefixed(relay, prefix: Self.prefix)
            let run = try E2E.run([E2E.binary, "bench", "rr", "--io", E2E.io, "--server", behind.url, "--pod", "default/web",
                                   "--port", "\(echoPort)", "-t", "0.5", "--warmup", "0.2", "-q",
                                   "--json", "\(scene.directory)/rr.json"], timeout: 60)
            #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")
            let seen = requests(proxy)
            #expect(seen.contains("h2 \(Self.prefix)/portForward/default/web"), "\(seen)")
            #expect(!seen.isEmpty && seen.allSatisfy { $0.hasPrefix("h2 \(Self.prefix)/") }, "\(seen)")
        }
    }
}
