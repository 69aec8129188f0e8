import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The pods file as the relay meets it: pods whose network namespace is missing or is not one,
// and files that must be refused at start.

/// One request through curl (prior knowledge): the status and the body.
private func request(_ relay: RelayProcess, pod: String, port: Int, scene: Scene) throws -> (code: String, body: String, seconds: Double) {
    let started = Date()
    let result = try E2E.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-H", "port: \(port)",
                              "--data-binary", "x", "-w", "\n%{http_code}", "\(relay.url)/portForward/default/\(pod)"],
                             timeout: 20, directory: scene.directory)
    let seconds = Date().timeIntervalSince(started)
    var lines = result.stdout.components(separatedBy: "\n")
    let code = lines.removeLast()
    return (code, lines.joined(separator: "\n"), seconds)
}

/// A pods file the relay must refuse at start, and the one line it must say.
enum BadPodsFile: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case fifo, directory, missing, huge, nullName, slashInName

    var testDescription: String { rawValue }

    /// Makes it in `directory`: its path, and the error line expected.
    func make(in directory: String) throws -> (path: String, line: String) {
        let path = "\(directory)/pods-\(rawValue).yaml"
        switch self {
        case .fifo:
            guard mkfifo(path, 0o644) == 0 else { throw HarnessError("mkfifo \(path) failed") }
            return (path, "error: pods file \(path) is a FIFO, not a regular file")
        case .directory:
            guard mkdir(path, 0o755) == 0 else { throw HarnessError("mkdir \(path) failed") }
            return (path, "error: pods file \(path) is a directory, not a regular file")
        case .missing:
            return (path, "error: cannot read pods file \(path): no such file or directory")
        case .huge:
            // Sparse: 17 MiB of nothing, cheap to make.
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0, ftruncate(fd, 17 << 20) == 0 else { throw HarnessError("cannot make \(path)") }
            close(fd)
            return (path, "error: pods file \(path) is larger than 16 MiB (\(17 << 20) bytes)")
        case .nullName:
            try "pods:\n  - {namespace: default, name: web}\n  - {namespace: default, name: ~}\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
            return (path, "error: \(path):3: pod #2: name must be a string, not null")
        case .slashInName:
            try "pods:\n  - {namespace: default, name: web/1}\n".write(toFile: path, atomically: true, encoding: .utf8)
            return (path, "error: \(path):2: pod #1: name \"web/1\" is not a valid pod name: Kubernetes pod names are DNS subdomains, "
                    + "at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit")
        }
    }
}

@Suite("End to end: the pods file, and pods that are not ready", .serialized)
struct PodsFileEndToEndTests {
    @Test("A FIFO named as a pod's netns: the relay starts, says the pod is not ready, answers it 502 at once, and serves the other pod",
          arguments: ConnectorKind.allCases)
    func fifoNamespace(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let web = try scene.makeNamespace()
            try scene.serve(in: web, port: echoPort)
            let fifo = "\(scene.directory)/fifo"
            guard mkfifo(fifo, 0o644) == 0 else { throw HarnessError("mkfifo \(fifo) failed") }
            let relay = try scene.startRelay(podsFile: """
                pods:
                  - {namespace: default, name: web, netns: \(web.path)}
                  - {namespace: default, name: stuck, netns: \(fifo)}
                """, connector: connector)

            // Twice: the first answer must not have left the relay stuck for the second.
            for _ in 1...2 {
                let answer = try request(relay, pod: "stuck", port: echoPort, scene: scene)
                #expect(answer.code == "502", "\(answer)")
                #expect(answer.body == "\(fifo) is not a network namespace (it is a FIFO)\n", "\(answer)")
                #expect(answer.seconds < 2, "answered after \(answer.seconds) s")
            }
            let answer = try request(relay, pod: "web", port: echoPort, scene: scene)
            #expect(answer.code == "200" && answer.body == "x", "\(answer)")

            let warnings = relay.child.stderr.split(separator: "\n").filter { $0.hasPrefix("warning:") }
            #expect(warnings == ["warning: pod default/stuck: \(fifo) is not a network namespace (it is a FIFO): not ready"], "\(warnings)")
            #expect(relay.child.stdout.contains("2 pods, 1 not ready"), "\(relay.child.stdout)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("A pod whose netns is made after the relay started: not ready at start, 502 until it exists, then reachable",
          arguments: ConnectorKind.allCases)
    func namespaceComesLater(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let name = scene.namespaceName()
            let path = "/run/netns/\(name)"
            let relay = try scene.startRelay(podsFile: "pods:\n  - {namespace: default, name: late, netns: \(path)}\n",
                                             connector: connector)
            let warnings = relay.child.stderr.split(separator: "\n").filter { $0.hasPrefix("warning:") }
            #expect(warnings == ["warning: pod default/late: \(path) does not exist: not ready"], "\(warnings)")

            var answer = try request(relay, pod: "late", port: echoPort, scene: scene)
            #expect(answer.code == "502" && answer.body == "\(path) does not exist\n", "\(answer)")
            #expect(answer.seconds < 2, "answered after \(answer.seconds) s")

            let late = try scene.makeNamespace(named: name)
            try scene.serve(in: late, port: echoPort)
            answer = try request(relay, pod: "late", port: echoPort, scene: scene)
            #expect(answer.code == "200" && answer.body == "x", "\(answer)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("A pods file that cannot be used ends the relay at start: exit 1, one line, no hang", arguments: BadPodsFile.allCases)
    func refusedAtStart(_ file: BadPodsFile) throws {
        try withScene { scene in
            let (path, line) = try file.make(in: scene.directory)
            let started = Date()
            let result = try E2E.run([E2E.binary, "relay", "--listen", "127.0.0.1:0", "--pods", path, "--io", E2E.io],
                                     timeout: 10, directory: scene.directory)
            #expect(Date().timeIntervalSince(started) < 5)
            #expect(result.status == 1, "\(result)")
            #expect(result.stderr == line + "\n", "\(result.stderr)")
            #expect(result.stdout.isEmpty, "\(result.stdout)")
        }
    }
}
