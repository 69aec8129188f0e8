import Testing
@testable import PortForward

@Suite("Pod registry")
struct PodRegistryTests {
    @Test("Flow style, as the README shows it")
    func flowStyle() throws {
        let registry = try PodRegistry(yaml: """
            pods:
              - {namespace: default, name: web, netns: /run/netns/web}   # a network namespace file
              - {namespace: default, name: db, pid: 4242}                # the netns of a process
              - {namespace: default, name: local}                        # neither
            """)
        #expect(registry.pods.count == 3)
        let web = try #require(registry.pod(namespace: "default", name: "web"))
        #expect(web.netns == "/run/netns/web")
        #expect(web.pid == nil)
        #expect(web.networkNamespacePath == "/run/netns/web")
        let db = try #require(registry.pod(namespace: "default", name: "db"))
        #expect(db.pid == 4242)
        #expect(db.netns == nil)
        #expect(db.networkNamespacePath == "/proc/4242/ns/net")
        let local = try #require(registry.pod(namespace: "default", name: "local"))
        #expect(local.networkNamespacePath == nil)
        #expect(local.qualifiedName == "default/local")
        #expect(registry.pod(namespace: "other", name: "web") == nil)
        #expect(registry.pod(namespace: "default", name: "nosuchpod") == nil)
    }

    @Test("Block style")
    func blockStyle() throws {
        let registry = try PodRegistry(yaml: """
            pods:
              - namespace: prod
                name: api
                netns: /run/netns/api
              - name: cache
                pid: 17
            """)
        #expect(registry.pod(namespace: "prod", name: "api") == Pod(namespace: "prod", name: "api", netns: "/run/netns/api"))
        // The namespace defaults to "default".
        #expect(registry.pod(namespace: "default", name: "cache") == Pod(namespace: "default", name: "cache", pid: 17))
    }

    @Test("The same name in two namespaces is two pods")
    func sameNameOtherNamespace() throws {
        let registry = try PodRegistry(yaml: "pods:\n  - {namespace: a, name: web}\n  - {namespace: b, name: web}\n")
        #expect(registry.pods.count == 2)
    }

    @Test("An empty list is an empty registry")
    func emptyList() throws {
        #expect(try PodRegistry(yaml: "pods: []\n").pods.isEmpty)
    }

    @Test("Invalid files are refused with a reason", arguments: [
        ("pods:\n  - {namespace: default}\n", "no name"),
        ("pods:\n  - {namespace: default, name: \"\"}\n", "no name"),
        ("pods:\n  - {namespace: default, name: web, port: 80}\n", "unknown field 'port'"),
        ("pods:\n  - {name: web, netns: /run/netns/web, pid: 12}\n", "not both"),
        ("pods:\n  - {name: web}\n  - {namespace: default, name: web}\n", "listed twice"),
        ("pods:\n  - {name: web, pid: -3}\n", "pid"),
        ("pods:\n  - {name: web, pid: abc}\n", "pid"),
        ("pods:\n  - web\n", "mapping"),
        ("pods: web\n", "list"),
        ("nodes: []\n", "pods"),
        ("pods: [\n", "YAML"),
    ])
    func invalid(_ text: String, _ reason: String) {
        do {
            let registry = try PodRegistry(yaml: text, source: "test.yaml")
            Issue.record("accepted: \(registry.pods)")
        } catch {
            #expect("\(error)".contains(reason), "\(error)")
            #expect("\(error)".hasPrefix("test.yaml"), "\(error)")
        }
    }

    @Test("A registry built from values")
    func fromValues() {
        let registry = PodRegistry([Pod(namespace: "x", name: "y", pid: 1)])
        #expect(registry.pod(namespace: "x", name: "y")?.networkNamespacePath == "/proc/1/ns/net")
    }
}
