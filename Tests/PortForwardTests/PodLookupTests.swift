import Testing
@testable import PortForward

@Suite("Pod arguments, named ports, the pod as the server describes it")
struct PodLookupTests {
    @Test("TYPE/NAME as kubectl takes it; other kinds get one line", arguments: [
        ("web", "web"), ("pod/web", "web"), ("pods/web", "web"), ("po/web-1", "web-1"), ("Pod/web", "web"),
    ])
    func podNames(argument: String, name: String) throws {
        #expect(try PodArgument.name(argument) == name)
    }

    @Test("Services and deployments are not pods", arguments: ["svc/web", "deployment/web", "deploy/web", "pod/", "pod/a/b", ""])
    func notPods(argument: String) {
        #expect(throws: PodArgument.Unsupported.self) { try PodArgument.name(argument) }
    }

    static let pod = """
        {"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default"},
         "spec":{"nodeName":"node-a","containers":[{"name":"c","ports":[{"name":"http","containerPort":8080},{"containerPort":9090}]},
                                                   {"name":"d","ports":[{"name":"metrics","containerPort":9100,"protocol":"TCP"}]}]},
         "status":{"phase":"Running"}}
        """

    @Test("A Pod object: node, phase, every container's ports")
    func description() throws {
        let pod = try PodDescription(json: Self.pod)
        #expect(pod.name == "web")
        #expect(pod.namespace == "default")
        #expect(pod.nodeName == "node-a")
        #expect(pod.phase == "Running")
        #expect(pod.notRunning == nil)
        #expect(pod.ports.map(\.number) == [8080, 9090, 9100])
        #expect(pod.ports.map(\.name) == ["http", nil, "metrics"])
        let pending = try PodDescription(json: #"{"kind":"Pod","metadata":{"name":"p"},"status":{"phase":"Pending"}}"#)
        #expect(pending.notRunning == "unable to forward port because pod is not running. Current status=Pending")
        let deleting = try PodDescription(json: #"{"kind":"Pod","metadata":{"name":"p","deletionTimestamp":"2026-11-28T12:00:00Z"},"status":{"phase":"Running"}}"#)
        #expect(deleting.notRunning == "unable to forward port because pod is being deleted")
        #expect(throws: PodDescription.Problem(description: #"pods "nope" not found"#)) {
            try PodDescription(json: #"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"nope\" not found","reason":"NotFound","code":404}"#)
        }
        #expect(throws: PodDescription.Problem.self) { try PodDescription(json: "<html>") }
    }

    @Test("Named ports resolve as kubectl resolves them", arguments: [
        ("http", 8080, 8080), ("18080:http", 18080, 8080), (":metrics", 0, 9100), ("5000", 5000, 5000),
        ("6000:5000", 6000, 5000), (":5000", 0, 5000), ("0:http", 0, 8080),
    ])
    func named(text: String, local: Int, remote: Int) throws {
        let pod = try PodDescription(json: Self.pod)
        #expect(try PortRequest(parsing: text).resolve(in: pod) == PortSpec(local: local, remote: remote))
    }

    @Test("A name the pod does not have, and names that are not names")
    func badNames() throws {
        let pod = try PodDescription(json: Self.pod)
        #expect(throws: PodDescription.Problem(description: "Pod 'web' does not have a named port 'grpc'")) {
            try PortRequest(parsing: "grpc").resolve(in: pod)
        }
        for text in ["a:b:c", "http:", "70000:http", "x y", "averyveryverylongname", "-1:http", "8080:0", "-1", "web-", "a--b", "HTTP", "a_b"] {
            #expect(throws: PortSpec.ParseError.self, "\(text)") { try PortRequest(parsing: text) }
        }
    }
}
