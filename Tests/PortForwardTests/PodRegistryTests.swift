import Foundation
import Testing
@testable import PortForward
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

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
        ("pods:\n  - {namespace: default, name: \"\"}\n", "name \"\" is not a valid pod name"),
        ("pods:\n  - {namespace: default, name: web, port: 80}\n", "unknown field \"port\" (known: name, namespace, netns, pid, ports)"),
        ("pods:\n  - {name: web, ports: 80}\n", "ports must be a list"),
        ("pods:\n  - {name: web, ports: [80]}\n", "pod #1: ports #1 must be a mapping"),
        ("pods:\n  - {name: web, ports: [{name: http}]}\n", "ports #1 has no containerPort"),
        ("pods:\n  - {name: web, ports: [{containerPort: 0}]}\n", "containerPort must be a number from 1 to 65535, not the number 0"),
        ("pods:\n  - {name: web, ports: [{containerPort: 65536}]}\n", "containerPort must be a number from 1 to 65535"),
        ("pods:\n  - {name: web, ports: [{containerPort: \"80\"}]}\n", "containerPort must be a number from 1 to 65535, not the string"),
        ("pods:\n  - {name: web, ports: [{containerPort: 1:30}]}\n", "containerPort must be a number"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, port: 1}]}\n", "ports #1: unknown field \"port\" (known: name, containerPort, protocol)"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, protocol: tcp}]}\n", "protocol must be TCP, UDP or SCTP, not \"tcp\""),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: HTTP}]}\n", "port name \"HTTP\" is not valid"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: \"1234\"}]}\n", "port name \"1234\" is not valid"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: a--b}]}\n", "is not valid"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: sixteen-letters-}]}\n", "is not valid"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: \"a\\\"b\"}]}\n", "is not valid"),
        ("pods:\n  - {name: web, ports: [{containerPort: 80, name: http}, {containerPort: 81, name: http}]}\n",
         "ports #2: port name \"http\" is given twice"),
        ("pods:\n  - {name: web, netns: /run/netns/web, pid: 12}\n", "not both"),
        ("pods:\n  - {name: web}\n  - {namespace: default, name: web}\n", "listed twice"),
        ("pods:\n  - {name: web, pid: -3}\n", "pid must be a positive integer"),
        ("pods:\n  - {name: web, pid: abc}\n", "pid must be a positive integer"),
        // A fuzz finding: Yams's sexagesimal integers overflowed and trapped.
        ("pods:\n  - {name: db, pid: 4000000000000000000:4}\n", "pid must be a positive integer"),
        ("pods:\n  - {name: db, pid: 1:30}\n", "pid must be a positive integer"),
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

    @Test("Container ports: named or not, protocol TCP unless given, in the order listed")
    func containerPorts() throws {
        let registry = try PodRegistry(yaml: """
            pods:
              - name: web
                ports:
                  - {name: http, containerPort: 8080}
                  - {containerPort: 9000, protocol: UDP}
                  - {name: metrics-2, containerPort: 9100, protocol: SCTP}
              - {name: bare, ports: ~}
              - {name: none}
            """)
        #expect(registry.pod(namespace: "default", name: "web")?.ports == [
            ContainerPort(name: "http", containerPort: 8080, protocol: "TCP"),
            ContainerPort(name: nil, containerPort: 9000, protocol: "UDP"),
            ContainerPort(name: "metrics-2", containerPort: 9100, protocol: "SCTP"),
        ])
        #expect(registry.pod(namespace: "default", name: "bare")?.ports == [])
        #expect(registry.pod(namespace: "default", name: "none")?.ports == [])
    }

    @Test("A registry built from values")
    func fromValues() {
        let registry = PodRegistry([Pod(namespace: "x", name: "y", pid: 1)])
        #expect(registry.pod(namespace: "x", name: "y")?.networkNamespacePath == "/proc/1/ns/net")
    }

    // MARK: fields, as Kubernetes names them

    /// The error for `text`, which must be refused; "" (and a recorded issue) if it was accepted.
    private func refusal(_ text: String) -> String {
        do {
            let registry = try PodRegistry(yaml: text, source: "pods.yaml")
            Issue.record("accepted: \(registry.pods)")
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test("A refused field names the file, its line, the entry and the rule, on one line", arguments: [
        // null, and values that YAML reads as something other than text
        ("pods:\n  - {name: ~}\n", "name must be a string, not null"),
        ("pods:\n  - {name: null}\n", "name must be a string, not null"),
        ("pods:\n  - {name: }\n", "name must be a string, not null"),
        ("pods:\n  - {name: 123}\n", "name must be a string, not the number 123 (quote it if you mean the text: \"123\")"),
        ("pods:\n  - {name: no}\n", "name must be a string, not the boolean no"),
        ("pods:\n  - {name: [web]}\n", "name must be a string, not a list"),
        ("pods:\n  - {name: {a: b}}\n", "name must be a string, not a mapping"),
        ("pods:\n  - {name: web, namespace: ~}\n", "namespace must be a string, not null"),
        ("pods:\n  - {name: web, namespace: 7}\n", "namespace must be a string, not the number 7"),
        // pod names: DNS subdomains
        ("pods:\n  - {name: web/x}\n", "name \"web/x\" is not a valid pod name: Kubernetes pod names are DNS subdomains"),
        ("pods:\n  - {name: Web}\n", "name \"Web\" is not a valid pod name"),
        ("pods:\n  - {name: -web}\n", "name \"-web\" is not a valid pod name"),
        ("pods:\n  - {name: web-}\n", "name \"web-\" is not a valid pod name"),
        ("pods:\n  - {name: web.}\n", "name \"web.\" is not a valid pod name"),
        ("pods:\n  - {name: .web}\n", "name \".web\" is not a valid pod name"),
        ("pods:\n  - {name: a..b}\n", "name \"a..b\" is not a valid pod name"),
        ("pods:\n  - {name: web_1}\n", "name \"web_1\" is not a valid pod name"),
        ("pods:\n  - {name: \"web pod\"}\n", "name \"web pod\" is not a valid pod name"),
        ("pods:\n  - {name: \"wéb\"}\n", "is not a valid pod name"),
        ("pods:\n  - {name: \(String(repeating: "a", count: 254))}\n", "is not a valid pod name"),
        // namespaces: DNS labels
        ("pods:\n  - {name: web, namespace: a.b}\n", "namespace \"a.b\" is not a valid namespace: Kubernetes namespaces are DNS labels"),
        ("pods:\n  - {name: web, namespace: Prod}\n", "namespace \"Prod\" is not a valid namespace"),
        ("pods:\n  - {name: web, namespace: a/b}\n", "namespace \"a/b\" is not a valid namespace"),
        ("pods:\n  - {name: web, namespace: \"\"}\n", "namespace \"\" is not a valid namespace"),
        ("pods:\n  - {name: web, namespace: \(String(repeating: "n", count: 64))}\n", "is not a valid namespace"),
        // netns: an absolute path
        ("pods:\n  - {name: web, netns: run/netns/web}\n", "netns must be an absolute path (such as /run/netns/web), not \"run/netns/web\""),
        ("pods:\n  - {name: web, netns: \"\"}\n", "netns must be an absolute path"),
        ("pods:\n  - {name: web, netns: ~}\n", "netns must be a string, not null"),
        ("pods:\n  - {name: web, netns: 5}\n", "netns must be a string, not the number 5"),
        ("pods:\n  - {name: web, netns: \"/run/netns/a\\0b\"}\n", "netns must be an absolute path"),
        ("pods:\n  - {name: web, netns: /\(String(repeating: "d", count: 4096))}\n", "netns must be an absolute path"),
        // pid: a positive integer that fits a pid_t
        ("pods:\n  - {name: web, pid: 0}\n", "pid must be a positive integer (a process id), not the number 0"),
        ("pods:\n  - {name: web, pid: \"12\"}\n", "pid must be a positive integer (a process id), not the string \"12\""),
        ("pods:\n  - {name: web, pid: 1.5}\n", "pid must be a positive integer"),
        ("pods:\n  - {name: web, pid: ~}\n", "pid must be a positive integer (a process id), not null"),
        ("pods:\n  - {name: web, pid: 2147483648}\n", "pid must be a positive integer"),
        ("pods:\n  - {name: web, pid: 99999999999999999999999}\n", "pid must be a positive integer"),
        // the entry itself
        ("pods:\n  - {name: web, name: db}\n", "field 'name' is given twice"),
        ("pods:\n  - {name: web, ~: x}\n", "unknown field"),
    ])
    func refusedField(_ text: String, _ reason: String) {
        let error = refusal(text)
        #expect(error.hasPrefix("pods.yaml:2: pod #1: "), "\(error)")
        #expect(error.contains(reason), "\(error)")
        #expect(!error.contains("\n"), "\(error)")
        #expect(error.count < 400, "\(error.count) characters: \(error)")
    }

    @Test("Names as Kubernetes allows them", arguments: [
        "web", "w", "0", "web-1", "a-b-c", "web.example.com", "a.b.c.d", "1.2.3",
        String(repeating: "a", count: 253),
        // Kubernetes limits a subdomain to 253 in all, not each label to 63.
        String(repeating: "a", count: 64) + "." + String(repeating: "b", count: 100),
    ])
    func acceptedName(_ name: String) throws {
        let registry = try PodRegistry(yaml: "pods:\n  - {namespace: \(String(repeating: "n", count: 63)), name: \"\(name)\"}\n")
        #expect(registry.pod(namespace: String(repeating: "n", count: 63), name: name) != nil)
    }

    @Test("A quoted number is a name; a pid may be written in hex")
    func quotedAndHex() throws {
        let registry = try PodRegistry(yaml: "pods:\n  - {namespace: \"42\", name: \"123\", pid: 0x10}\n")
        #expect(registry.pod(namespace: "42", name: "123")?.pid == 16)
    }

    @Test("The message names the entry that is wrong, not the first")
    func entryNumber() {
        let error = refusal("pods:\n  - {name: web}\n  - {name: db}\n  - name: cache\n    netns: relative\n")
        #expect(error == "pods.yaml:5: pod #3: netns must be an absolute path (such as /run/netns/web), not \"relative\"", "\(error)")
        let twice = refusal("pods:\n  - {name: web}\n  - {name: db}\n  - {name: web}\n")
        #expect(twice == "pods.yaml:4: pod #3: pod default/web is listed twice (first as pod #1)", "\(twice)")
    }

    @Test("A value with a newline or a megabyte of text stays one short line")
    func hostileValues() {
        let newline = refusal("pods:\n  - {name: \"web\\nwarning: pod x/y is ready\"}\n")
        #expect(!newline.contains("\n") && newline.contains("\\n"), "\(newline)")
        let long = refusal("pods:\n  - {name: \"\(String(repeating: "X", count: 1 << 20))\"}\n")
        #expect(long.count < 400 && long.contains("\"..."), "\(long.prefix(500))")
    }

    @Test("YAML errors are one line with the position")
    func yamlErrorLine() {
        let error = refusal("pods:\n  - {name: web\n  - [\n")
        #expect(error.hasPrefix("pods.yaml:") && error.contains("not valid YAML"), "\(error)")
        #expect(!error.contains("\n"), "\(error)")
    }

    @Test("Nesting deeper than a pods file needs is refused before Yams recurses into it")
    func deepNesting() {
        // A hundred thousand levels overflow the stack of a recursive composer.
        let error = refusal("pods: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n")
        #expect(error == "pods.yaml:1: lists and mappings nested more than 64 deep (a pods file needs 3)", "\(error)")
        let block = refusal("pods:\n" + String(repeating: "- ", count: 100_000) + "x\n")
        #expect(block.contains("nested more than 64 deep"), "\(block)")
        // 64 is still fine as YAML (and then wrong as a pods file).
        let shallow = refusal("pods: [" + String(repeating: "[", count: 62) + String(repeating: "]", count: 62) + "]\n")
        #expect(shallow.contains("must be a mapping"), "\(shallow)")
    }

    @Test("Aliases are not expanded: a billion laughs costs what its text costs")
    func aliases() {
        var text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        var previous = "a"
        for level in 1...12 {
            let name = "a\(level)"
            text += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 10).joined(separator: ", ") + "]\n"
            previous = name
        }
        text += "pods: [*\(previous)]\n"
        let started = Date()
        let error = refusal(text)
        #expect(error.contains("pod #1: must be a mapping"), "\(error)")
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test("An alias may stand for a whole entry")
    func aliasEntry() throws {
        let registry = try PodRegistry(yaml: "base: &web {name: web, netns: /run/netns/web}\npods: [*web]\n")
        #expect(registry.pod(namespace: "default", name: "web")?.netns == "/run/netns/web")
    }

    // MARK: the file

    @Test("The pods file: a FIFO, a directory, a missing or huge file is refused at once, with one line")
    func files() throws {
        let directory = try TemporaryDirectory()
        let good = directory.path + "/pods.yaml"
        try "pods:\n  - {name: web}\n".write(toFile: good, atomically: true, encoding: .utf8)
        #expect(try PodRegistry(contentsOf: good).pods.count == 1)

        func refused(_ path: String) -> String {
            do {
                let registry = try PodRegistry(contentsOf: path)
                Issue.record("accepted \(path): \(registry.pods)")
                return ""
            } catch {
                #expect(!"\(error)".contains("\n"))
                return "\(error)"
            }
        }
        let fifo = directory.path + "/fifo"
        #expect(mkfifo(fifo, 0o644) == 0)
        // Were the FIFO opened blocking, this would wait for a writer: one comes after 5 s, so
        // that a regression fails on the time rather than hanging the test run.
        let writer = DelayedFIFOWriter(fifo, after: 5)
        let started = Date()
        #expect(refused(fifo) == "pods file \(fifo) is a FIFO, not a regular file")
        #expect(Date().timeIntervalSince(started) < 2)
        writer.cancel()

        #expect(refused(directory.path) == "pods file \(directory.path) is a directory, not a regular file")
        #expect(refused(directory.path + "/missing") == "cannot read pods file \(directory.path)/missing: no such file or directory")
        #expect(refused("/dev/null") == "pods file /dev/null is a device, not a regular file")

        // Sparse: 17 MiB that cost nothing to make, refused without being read.
        let huge = directory.path + "/huge.yaml"
        let fd = open(huge, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(fd >= 0 && ftruncate(fd, off_t(PodRegistry.maximumFileSize + (1 << 20))) == 0)
        close(fd)
        #expect(refused(huge) == "pods file \(huge) is larger than 16 MiB (\(PodRegistry.maximumFileSize + (1 << 20)) bytes)")

        let binary = directory.path + "/binary.yaml"
        try Data([0x70, 0x6f, 0x64, 0x73, 0x3a, 0xff, 0xfe, 0x0a]).write(to: URL(fileURLWithPath: binary))
        #expect(refused(binary) == "pods file \(binary) is not UTF-8 text")
    }

    @Test("Loading checks every pod's namespace: missing or wrong ones are kept, not ready, with the reason")
    func readiness() throws {
        let directory = try TemporaryDirectory()
        let fifo = directory.path + "/fifo"
        #expect(mkfifo(fifo, 0o644) == 0)
        let namespace = try RealNetworkNamespace()
        let registry = try PodRegistry(yaml: """
            pods:
              - {name: web, netns: \(namespace.path)}
              - {name: fifo, netns: \(fifo)}
              - {name: gone, netns: \(directory.path)/gone}
              - {name: self, pid: \(getpid())}
              - {name: nopid, pid: 2147483647}
              - {name: local}
            """)
        #expect(registry.pods.values.allSatisfy { $0.readiness == .unchecked })
        let checked = registry.checkingNamespaces()
        #expect(checked.pods.count == 6)
        #expect(checked.pod(namespace: "default", name: "web")?.readiness == .ready)
        #expect(checked.pod(namespace: "default", name: "self")?.readiness == .ready)
        #expect(checked.pod(namespace: "default", name: "local")?.readiness == .ready)
        #expect(checked.pod(namespace: "default", name: "fifo")?.readiness == .notReady(reason: "\(fifo) is not a network namespace (it is a FIFO)"))
        #expect(checked.pod(namespace: "default", name: "gone")?.readiness == .notReady(reason: "\(directory.path)/gone does not exist"))
        #expect(checked.pod(namespace: "default", name: "nopid")?.readiness == .notReady(reason: "/proc/2147483647/ns/net does not exist"))
        #expect(checked.notReady.map(\.name) == ["fifo", "gone", "nopid"])
        #expect(checked.pod(namespace: "default", name: "fifo")?.ready == false)

        // A namespace deleted after the check is not there for the next one.
        try namespace.delete()
        #expect(checked.checkingNamespaces().pod(namespace: "default", name: "web")?.readiness == .notReady(reason: "\(namespace.path) does not exist"))
    }
}
