import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The pods file as the relay meets it: pods whose network namespace is missing or is not one.

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

@Suite("End to end: the pods file, and pods that are not ready", .serialized)
struct PodsFileEndToEndTests {
    @Test("A FIFO named as a pod's netns: the relay answers it 502 at once, and serves the other pod",
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

            #expect(relay.child.isRunning)
        }
    }
}
