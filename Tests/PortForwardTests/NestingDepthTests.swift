import Testing
@testable import PortForward

/// Yams composes recursively: text nested some thousands deep overflowed the stack (SIGSEGV) of
/// the client (a kubeconfig, an exec plugin's output, a server's pod answer) and of the gateway
/// (a node relay's pod list). Each entry point goes through `NestingDepth.compose`, whose refusal
/// each says in its own words; these would crash the test process without it.
@Suite("Nesting: every YAML and JSON parser refuses text nested past NestingDepth.limit")
struct NestingDepthTests {
    static let depth = 20_000
    static let deep = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)

    /// `levels` lists inside one another as a JSON value.
    static func nested(_ levels: Int) -> String {
        String(repeating: "[", count: levels) + String(repeating: "]", count: levels)
    }

    @Test("The check itself: the line, and the limit exactly")
    func check() throws {
        #expect(NestingDepth.firstBeyond(NestingDepth.limit, in: Self.nested(NestingDepth.limit)) == nil)
        #expect(NestingDepth.firstBeyond(NestingDepth.limit, in: Self.nested(NestingDepth.limit + 1)) == 1)
        #expect(NestingDepth.firstBeyond(NestingDepth.limit, in: "a: 1\nb:\n  " + Self.deep) == 3)
        #expect(throws: NestingDepth.TooDeep.self) { try NestingDepth.compose(Self.deep) }
        #expect(try NestingDepth.compose("{a: [1, 2]}") != nil)
    }

    @Test("A kubeconfig nested 20,000 deep is refused with its path and line")
    func kubeconfig() {
        let error = #expect(throws: Kubeconfig.LoadError.self) {
            try Kubeconfig(yaml: "apiVersion: v1\nclusters: " + Self.deep + "\n", path: "/k/config")
        }
        #expect(error?.description == "kubeconfig /k/config:2: lists and mappings nested more than 64 deep (a kubeconfig needs 5)",
                "\(String(describing: error))")
    }

    @Test("An exec plugin's output nested 20,000 deep")
    func execCredential() {
        let error = #expect(throws: ExecCredential.ParseError.self) {
            try ExecCredential(output: Self.deep, apiVersion: "client.authentication.k8s.io/v1")
        }
        #expect(error?.description == "the plugin's output nests lists and mappings more than 64 deep", "\(String(describing: error))")
    }

    @Test("A server's pod read and pod list (the gateway reads each node relay's) nested 20,000 deep")
    func podAnswers() {
        let read = #expect(throws: PodDescription.Problem.self) { try PodDescription(json: Self.deep) }
        #expect(read?.description == "the server's answer nests lists and mappings more than 64 deep", "\(String(describing: read))")
        // The repro from the client: 10 KB.
        let small = #expect(throws: PodDescription.Problem.self) { try PodDescription(json: Self.nested(5_000)) }
        #expect(small?.description.contains("more than 64 deep") == true, "\(String(describing: small))")
        let list = #expect(throws: PodDescription.Problem.self) {
            try PodDescription.list(json: #"{"kind":"PodList","items":"# + Self.deep + "}")
        }
        #expect(list?.description == "the server's answer nests lists and mappings more than 64 deep", "\(String(describing: list))")
        // Not JSON at all is still said as before.
        let junk = #expect(throws: PodDescription.Problem.self) { try PodDescription(json: "{\"kind\": [") }
        #expect(junk?.description == "the server's answer is not JSON", "\(String(describing: junk))")
    }

    /// A Pod as an API server writes it, managedFields and all: its deepest path (a PodList's
    /// item, managedFields, fieldsV1 mirroring a container's env) nests 15 deep.
    static let realPodList = """
        {"kind":"PodList","apiVersion":"v1","items":[{"kind":"Pod","apiVersion":"v1",
         "metadata":{"name":"web","namespace":"default","managedFields":[{"manager":"kubectl","operation":"Update",
           "fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:affinity":{".":{},"f:nodeAffinity":{".":{},
             "f:requiredDuringSchedulingIgnoredDuringExecution":{"f:nodeSelectorTerms":{}}}},
             "f:containers":{"k:{\\"name\\":\\"c\\"}":{"f:env":{"k:{\\"name\\":\\"TOKEN\\"}":{"f:valueFrom":{"f:secretKeyRef":{"f:key":{},"f:name":{}}}}}}}}}}]},
         "spec":{"nodeName":"node-a","affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":
           {"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a","b"]}]}]}}},
          "containers":[{"name":"c","ports":[{"name":"http","containerPort":8080}],
            "env":[{"name":"TOKEN","valueFrom":{"secretKeyRef":{"name":"s","key":"k"}}}]}]},
         "status":{"phase":"Running"}}]}
        """

    @Test("The limit leaves room: a real pod list (15 deep) reads, and so does one 64 deep")
    func realPods() throws {
        let pods = try PodDescription.list(json: Self.realPodList)
        #expect(pods.map(\.name) == ["web"])
        #expect(pods.first?.ports.map(\.number) == [8080])
        // 4 levels are the list's, its items', the pod's and its metadata's; 60 in a field of its own.
        let edge = #"{"kind":"PodList","items":[{"metadata":{"name":"x","extra":"# + Self.nested(60) + "}}]}"
        #expect(try PodDescription.list(json: edge).map(\.name) == ["x"])
        let beyond = #"{"kind":"PodList","items":[{"metadata":{"name":"x","extra":"# + Self.nested(61) + "}}]}"
        #expect(throws: PodDescription.Problem.self) { try PodDescription.list(json: beyond) }
    }
}
