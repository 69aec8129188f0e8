import Testing
import HTTP2
@testable import PortForward

/// One request to the API, and what must come back: the status, and text the body must hold.
struct APICase: Sendable, CustomTestStringConvertible {
    var name: String
    var method = "GET"
    var target: String
    var headers: [(String, String)] = []
    var status: Int
    /// Each must appear in the body, as written.
    var body: [String]
    var testDescription: String { name }
}

private let registry = PodRegistry([
    Pod(namespace: "default", name: "web", netns: "/run/netns/web",
        ports: [ContainerPort(name: "http", containerPort: 8080), ContainerPort(containerPort: 9000, protocol: "UDP")]),
    Pod(namespace: "default", name: "stuck", netns: "/run/netns/stuck"),
    Pod(namespace: "kube-system", name: "dns.1"),
])

/// A pod is running when it is not `stuck`: the test decides, no namespace is opened.
private let api = KubernetesAPI(registry: registry, node: "node-1") { $0.name != "stuck" }

private func notFound(_ name: String) -> String {
    #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"\#(name)\" not found","reason":"NotFound","details":{"name":"\#(name)","kind":"pods"},"code":404}"#
}

private let webPod = #"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"\#(KubernetesAPI.uid(Pod(namespace: "default", name: "web")))","resourceVersion":"1"},"spec":{"nodeName":"node-1","containers":[{"name":"main","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":9000,"protocol":"UDP"}]}]},"status":{"phase":"Running"}}"#

@Suite("Kubernetes API: a request in, a JSON answer out")
struct KubernetesAPITests {
    static let cases: [APICase] = [
        APICase(name: "/version says 1.32, so the kubectl dispatcher runs kubectl.1.32", target: "/version?timeout=5s", status: 200,
                body: [#"{"major":"1","minor":"32","gitVersion":"v1.32.0-portforward""#]),
        APICase(name: "/api lists v1", target: "/api", status: 200,
                body: [#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#]),
        APICase(name: "/apis has no groups", target: "/apis", status: 200,
                body: [#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#]),
        APICase(name: "/api/v1 lists pods with get and list", target: "/api/v1", status: 200,
                body: [#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"]"#,
                       #"{"name":"pods/portforward""#]),
        APICase(name: "a pod, with its node, named ports and phase", target: "/api/v1/namespaces/default/pods/web", status: 200, body: [webPod]),
        APICase(name: "a pod asked for as protobuf comes as JSON", target: "/api/v1/namespaces/default/pods/web",
                headers: [("accept", "application/vnd.kubernetes.protobuf,application/json")], status: 200, body: [webPod]),
        APICase(name: "a pod asked for as protobuf only comes as JSON too", target: "/api/v1/namespaces/default/pods/web",
                headers: [("accept", "application/vnd.kubernetes.protobuf")], status: 200, body: [webPod]),
        APICase(name: "HEAD is answered as GET (the executor leaves the body out)", method: "HEAD",
                target: "/api/v1/namespaces/default/pods/web", status: 200, body: [webPod]),
        APICase(name: "a pod whose network cannot be entered is Pending", target: "/api/v1/namespaces/default/pods/stuck", status: 200,
                body: [#""status":{"phase":"Pending"}"#, #""containers":[{"name":"main"}]"#]),
        APICase(name: "a pod with dots in its name, in its own namespace", target: "/api/v1/namespaces/kube-system/pods/dns.1", status: 200,
                body: [#""metadata":{"name":"dns.1","namespace":"kube-system""#]),
        APICase(name: "a missing pod is a NotFound Status", target: "/api/v1/namespaces/default/pods/nope", status: 404,
                body: [notFound("nope")]),
        APICase(name: "a pod in another namespace is not found", target: "/api/v1/namespaces/other/pods/web", status: 404,
                body: [notFound("web")]),
        APICase(name: "a name from the path is escaped in the Status", target: #"/api/v1/namespaces/default/pods/a"b\c"#, status: 404,
                body: [#""message":"pods \"a\"b\\c\" not found""#]),
        APICase(name: "a namespace's pods, sorted", target: "/api/v1/namespaces/default/pods", status: 200,
                body: [#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"kind":"Pod""#,
                       #""name":"stuck""#, #""name":"web""#]),
        APICase(name: "an empty namespace lists no pods", target: "/api/v1/namespaces/none/pods", status: 200, body: [#""items":[]}"#]),
        APICase(name: "every pod", target: "/api/v1/pods?limit=500", status: 200, body: [#""name":"dns.1""#, #""name":"web""#]),
        APICase(name: "watching is refused", target: "/api/v1/pods?watch=true", status: 400,
                body: [#""message":"watch is not supported: this relay serves a fixed list of pods","reason":"BadRequest""#]),
        APICase(name: "a method other than GET is not allowed", method: "DELETE", target: "/api/v1/namespaces/default/pods/web", status: 405,
                body: [#""reason":"MethodNotAllowed","code":405}"#]),
        APICase(name: "an unknown resource is not found", target: "/api/v1/services", status: 404,
                body: [#""message":"the server could not find the requested resource","reason":"NotFound""#]),
        APICase(name: "an unknown group is not found", target: "/apis/apps/v1", status: 404, body: [#""reason":"NotFound""#]),
        APICase(name: "portforward without an upgrade is told to upgrade, as kube-apiserver does",
                target: "/api/v1/namespaces/default/pods/web/portforward", status: 400,
                body: [#""message":"Upgrade request required","reason":"BadRequest","code":400}"#]),
        APICase(name: "a WebSocket port-forward is not spoken yet: not 101, so kubectl falls back to SPDY",
                target: "/api/v1/namespaces/default/pods/web/portforward",
                headers: [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io")],
                status: 501, body: [#""message":"this relay does not speak WebSocket port-forward yet: "#, #""reason":"NotImplemented""#]),
        APICase(name: "a SPDY upgrade without portforward.k8s.io (the handshake takes the rest) is refused as kubelet does", method: "POST",
                target: "/api/v1/namespaces/default/pods/web/portforward",
                headers: [("connection", "Upgrade"), ("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "channel.k8s.io")],
                status: 403, body: [#""message":"unable to upgrade: no stream protocol in common: this relay speaks portforward.k8s.io","reason":"Forbidden","code":403}"#]),
        APICase(name: "a port-forward to a missing pod is NotFound", method: "POST",
                target: "/api/v1/namespaces/default/pods/nope/portforward", headers: [("upgrade", "SPDY/3.1")],
                status: 404, body: [notFound("nope")]),
        APICase(name: "a port-forward with a method it does not take", method: "PUT",
                target: "/api/v1/namespaces/default/pods/web/portforward", status: 405, body: [#""reason":"MethodNotAllowed""#]),
    ]

    @Test("Answer", arguments: cases)
    func answer(_ example: APICase) {
        let response = api.respond(method: example.method, target: example.target,
                                   headers: HeadFields(example.headers.map { (name: $0.0, value: $0.1) }))
        #expect(response.status == example.status, "\(response.body)")
        #expect(response.headers.map(\.name) == ["Content-Type"])
        #expect(response.headers.first?.value == "application/json")
        for part in example.body {
            #expect(response.body.contains(part), "\(response.body)")
        }
        #expect(response.reasonPhrase == KubernetesAPI.reasonPhrase(example.status))
        #expect(response.reasonPhrase != "Error")
    }

    @Test("Which targets the API serves")
    func serves() {
        #expect(KubernetesAPI.serves("/version?timeout=5s"))
        #expect(KubernetesAPI.serves("/api"))
        #expect(KubernetesAPI.serves("/apis/"))
        #expect(!KubernetesAPI.serves("/apiary"))
        #expect(!KubernetesAPI.serves("/portForward/default/web"))
        #expect(!KubernetesAPI.serves("*"))
    }

    @Test("A pod's uid is a version 8 UUID from its namespace and name: stable, and different for another pod")
    func uid() {
        let web = KubernetesAPI.uid(Pod(namespace: "default", name: "web"))
        #expect(web == KubernetesAPI.uid(Pod(namespace: "default", name: "web", pid: 12)))
        #expect(web != KubernetesAPI.uid(Pod(namespace: "other", name: "web")))
        #expect(web != KubernetesAPI.uid(Pod(namespace: "default", name: "web2")))
        let groups = web.split(separator: "-").map(\.count)
        #expect(groups == [8, 4, 4, 4, 12], "\(web)")
        #expect(web.split(separator: "-")[2].first == "8", "\(web)")
        #expect("89ab".contains(web.split(separator: "-")[3].first!), "\(web)")
        #expect(web.allSatisfy { "0123456789abcdef-".contains($0) }, "\(web)")
    }

    /// Pod names and namespaces cannot need escaping (the pods file holds DNS names only), but the
    /// node name (`--node`, the host name) and names echoed from a request path can.
    @Test("The node's name is escaped in a pod")
    func nodeEscaped() {
        let odd = KubernetesAPI(registry: registry, node: "a\"b\\c\nd") { _ in true }
        let body = odd.respond(method: "GET", target: "/api/v1/namespaces/default/pods/web", headers: HeadFields()).body
        #expect(body.contains(#""nodeName":"a\"b\\c\nd""#), "\(body)")
    }
}

@Suite("JSON: the writer's escaping")
struct JSONTests {
    @Test("Strings are escaped as RFC 8259 says", arguments: [
        ("plain", #""plain""#),
        ("quote \" backslash \\ slash /", #""quote \" backslash \\ slash /""#),
        ("\n\r\t\u{8}\u{C}", #""\n\r\t\b\f""#),
        ("\u{0}\u{1}\u{1F}\u{7F}", #""\u0000\u0001\u001f\#u{7F}""#),
        ("é 漢 😀", #""é 漢 😀""#),
        ("\u{2028}\u{2029}", #""\u2028\u2029""#),
        ("", #""""#),
    ])
    func escaping(_ text: String, _ expected: String) {
        #expect(JSONValue.string(text).serialized == expected)
    }

    @Test("Values nest, and members keep their order")
    func nesting() {
        let value = JSONValue.object([("z", .number(-1)), ("a", .array([.bool(true), .bool(false), .null, .object([])])),
                                      ("key \"q\"", .array([]))])
        #expect(value.serialized == #"{"z":-1,"a":[true,false,null,{}],"key \"q\"":[]}"#)
    }
}
