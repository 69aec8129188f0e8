import Foundation
import Testing
@testable import HTTP2
@testable import PortForward
@testable import Reactor

@Suite("Gateway: the nodes file, the union of the nodes' pods, and where a path leads")
struct GatewayTests {
    @Test("A nodes file: flow style, https, IPv6, a host name resolved once")
    func nodesFile() throws {
        let nodes = try NodesFile.parse("""
            nodes:
              - {name: node-a, address: 10.89.0.2:10250}
              - {name: node-b, address: "https://10.89.0.3:10250"}
              - {name: node-c, address: "[::1]:10250"}
              - name: node-d
                address: localhost:10250
            """)
        #expect(nodes.map(\.name) == ["node-a", "node-b", "node-c", "node-d"])
        #expect(nodes.map(\.secure) == [false, true, false, false])
        #expect(nodes[0].address.description == "10.89.0.2:10250")
        #expect(nodes[1].url == "https://10.89.0.3:10250")
        #expect(nodes[2].address.description == "[::1]:10250")
        #expect(nodes[3].address.port == 10250)
    }

    @Test("A node address may end in a slash; any other path is refused (the node relay is asked at its root)")
    func nodeAddressSlash() throws {
        let nodes = try NodesFile.parse("nodes:\n  - {name: a, address: \"http://10.89.0.2:10250/\"}")
        #expect(nodes.map(\.url) == ["http://10.89.0.2:10250"])
    }

    @Test("A bad nodes file is refused with its line and what is wrong", arguments: [
        ("nodes: []", "at least one node"),
        ("pods: []", "'nodes:'"),
        ("nodes:\n  - {name: Node_A, address: 1.2.3.4:1}", "not a valid node name"),
        ("nodes:\n  - {name: a, address: 1.2.3.4}", "is not HOST:PORT"),
        ("nodes:\n  - {name: a, address: \"1.2.3.4:99999\"}", "is not HOST:PORT"),
        ("nodes:\n  - {name: a}", "has no address"),
        ("nodes:\n  - {name: a, address: \"http://1.2.3.4:10250/k8s/clusters/c-abc\"}", "has a path"),
        ("nodes:\n  - {name: a, address: \"1.2.3.4:10250/x\"}", "has a path"),
        ("nodes:\n  - {name: a, address: 1.2.3.4:1, port: 3}", "unknown field"),
        ("nodes:\n  - {name: a, address: 1.2.3.4:1}\n  - {name: a, address: 1.2.3.5:1}", "listed twice"),
        ("nodes:\n  - {name: a, address: no-such-host.invalid:1}", "cannot resolve"),
    ])
    func badNodesFile(_ text: String, _ expected: String) {
        #expect {
            _ = try NodesFile.parse(text, source: "nodes.yaml")
        } throws: { error in
            "\(error)".hasPrefix("nodes.yaml") && "\(error)".contains(expected)
        }
    }

    private static let union: (PodRegistry, [String: [Pod]]) = {
        let web = Pod(namespace: "default", name: "web", node: "node-a", phase: "Running")
        let down = Pod(namespace: "default", name: "db", node: "node-c", phase: "Unknown")
        let twice = [Pod(namespace: "default", name: "dup", node: "node-a", phase: "Running"),
                     Pod(namespace: "default", name: "dup", node: "node-b", phase: "Running")]
        return (PodRegistry([web, down]), ["default/dup": twice])
    }()

    @Test("The pod API: each pod's node and reported phase; a name two nodes report is listed twice and is a 409")
    func api() {
        let (registry, conflicts) = Self.union
        let api = KubernetesAPI(registry: registry, node: "gateway", conflicts: conflicts) { _ in true }
        let list = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods", headers: HeadFields([]))
        #expect(list.status == 200)
        #expect(list.body.components(separatedBy: "\"nodeName\"").count - 1 == 4)
        #expect(list.body.contains("\"nodeName\":\"node-b\""))
        let down = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods/db", headers: HeadFields([]))
        #expect(down.body.contains("\"nodeName\":\"node-c\"") && down.body.contains("\"phase\":\"Unknown\""))
        let dup = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods/dup", headers: HeadFields([]))
        #expect(dup.status == 409)
        #expect(dup.body.contains("\"reason\":\"Conflict\"") && dup.body.contains("(node-a, node-b)"))
        #expect(api.respond(method: "GET", target: "/api/v1/namespaces/default/pods/nope", headers: HeadFields([])).status == 404)
    }

    @Test("kubectl get asks for a Table: the pods' rows with their node (-o wide's column); otherwise the objects")
    func table() {
        let (registry, conflicts) = Self.union
        let api = KubernetesAPI(registry: registry, node: "gateway", conflicts: conflicts) { _ in true }
        let accept = HeadFields([(name: "accept", value: "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")])
        let list = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods", headers: accept)
        #expect(list.body.hasPrefix("{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/v1\""))
        #expect(list.body.contains("[\"db\",\"0/1\",\"Unknown\",\"0\",\"<unknown>\",\"<none>\",\"node-c\",\"<none>\",\"<none>\"]"), "\(list.body)")
        #expect(list.body.contains("[\"dup\",\"1/1\",\"Running\",\"0\",\"<unknown>\",\"<none>\",\"node-b\",\"<none>\",\"<none>\"]"), "\(list.body)")
        let one = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods/web", headers: accept)
        #expect(one.body.contains("\"kind\":\"Table\"") && one.body.contains("\"node-a\",\"<none>\",\"<none>\"]"))
        let plain = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods/web", headers: HeadFields([(name: "accept", value: "application/json")]))
        #expect(plain.body.hasPrefix("{\"kind\":\"Pod\""))
    }

    @Test("A list's fieldSelector: node, name, namespace, phase; = == !=; another field is a 400", arguments: [
        ("spec.nodeName=node-a", ["dup@node-a", "web@node-a"]),
        ("spec.nodeName%3Dnode-b", ["dup@node-b"]),
        ("metadata.name==dup,spec.nodeName!=node-a", ["dup@node-b"]),
        ("status.phase!=Running", ["db@node-c"]),
        ("metadata.namespace=other", []),
        ("spec.restartPolicy=Always", ["400 field label not supported: spec.restartPolicy"]),
        ("nonsense", ["400 invalid selector: 'nonsense'; can't understand 'nonsense'"]),
    ])
    func fieldSelector(_ selector: String, _ expected: [String]) {
        let (registry, conflicts) = Self.union
        let api = KubernetesAPI(registry: registry, node: "gateway", conflicts: conflicts) { _ in true }
        let answer = api.respond(method: "GET", target: "/api/v1/namespaces/default/pods?fieldSelector=\(selector)", headers: HeadFields([]))
        if answer.status != 200 {
            #expect(expected.count == 1 && answer.body.contains(String(expected[0].dropFirst(4))) && expected[0].hasPrefix("\(answer.status) "), "\(answer.body)")
            return
        }
        let names = answer.body.components(separatedBy: "\"name\":\"").dropFirst().compactMap { $0.split(separator: "\"").first }
            .filter { $0 != "main" }
        let nodes = answer.body.components(separatedBy: "\"nodeName\":\"").dropFirst().compactMap { $0.split(separator: "\"").first }
        #expect(zip(names, nodes).map { "\($0)@\($1)" } == expected, "\(answer.body)")
    }

    @Test("Where a path leads on a gateway", arguments: [
        ("/portForward/default/web", "pod web on node-a"),
        ("/proxy/nodes/node-a/portForward/default/web", "pod web on node-a"),
        ("/api/v1/namespaces/default/pods/web/portforward", "pod web on node-a"),
        ("/proxy/nodes/node-b/portForward/default/web", "404 pod \"default/web\" not found on node \"node-b\""),
        ("/proxy/nodes/node-z/portForward/default/web", "404 node \"node-z\" not found"),
        ("/portForward/default/dup", "409"),
        ("/api/v1/namespaces/default/pods/dup/portforward", "409"),
        ("/proxy/nodes/node-b/portForward/default/dup", "pod dup on node-b"),
        ("/proxy/nodes/node-c/portForward/default/dup", "503 node \"node-c\" is unreachable: connection refused"),
        ("/portForward/default/nope", "404 pod \"default/nope\" not found"),
        ("/proxy/nodes/node-c/portForward/default/nope", "503 node \"node-c\" is unreachable: connection refused"),
    ])
    func resolve(_ path: String, _ expected: String) throws {
        let reactor = try Reactors.make(.epoll)
        let (registry, conflicts) = Self.union
        let relay = try Relay(listen: SocketAddress(ip: "127.0.0.1", port: 0)!, node: "gateway", registry: registry,
                              connector: NsenterConnector(reactor: reactor), reactor: reactor)
        relay.nodes = ["node-a", "node-b", "node-c"]
        relay.conflicts = conflicts
        relay.unreachableNode = { $0 == "node-c" ? "connection refused" : nil }
        switch relay.resolve(path) {
        case .pod(let pod): #expect("pod \(pod.name) on \(pod.node ?? "?")" == expected)
        case .refused(let refusal): #expect("\(refusal.status) \(refusal.text)".hasPrefix(expected))
        }
    }

    @Test("A relay's own paths are as before: its node, or 404 for another")
    func relayPaths() throws {
        let reactor = try Reactors.make(.epoll)
        let relay = try Relay(listen: SocketAddress(ip: "127.0.0.1", port: 0)!, node: "node-1",
                              registry: PodRegistry([Pod(namespace: "default", name: "web")]),
                              connector: NsenterConnector(reactor: reactor), reactor: reactor)
        guard case .pod = relay.resolve("/proxy/nodes/node-1/portForward/default/web") else { Issue.record("not served"); return }
        guard case .refused(let refusal) = relay.resolve("/proxy/nodes/node-2/portForward/default/web") else { Issue.record("served"); return }
        #expect(refusal.text == "node \"node-2\" not found")
    }

    @Test("A PodList's items are read; anything else is refused")
    func podList() throws {
        let pods = try PodDescription.list(json: """
            {"kind":"PodList","items":[{"kind":"Pod","metadata":{"name":"web","namespace":"default"},\
            "spec":{"nodeName":"n","containers":[{"ports":[{"name":"http","containerPort":80}]}]},"status":{"phase":"Running"}},\
            {"metadata":{"name":"db","namespace":"x"},"status":{"phase":"Pending"}}]}
            """)
        #expect(pods.map(\.name) == ["web", "db"])
        #expect(pods.map(\.phase) == ["Running", "Pending"])
        #expect(pods[0].ports.first?.name == "http")
        #expect(throws: PodDescription.Problem.self) { try PodDescription.list(json: "{\"kind\":\"Status\"}") }
    }
}
