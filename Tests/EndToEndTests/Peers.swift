import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Peers not written with our code: Tests/Peers/h2peer.py (the `h2` library) and
/// Tests/Peers/fakerelay.py, run with the virtual environment `make test` creates (.venv).
enum Peers {
    static let python = E2E.packageRoot + "/.venv/bin/python"
    static let h2peer = E2E.packageRoot + "/Tests/Peers/h2peer.py"
    static let fakeRelay = E2E.packageRoot + "/Tests/Peers/fakerelay.py"

    /// Fails the test (CI) or cancels it (a hand-run `swift test`) when the environment is missing.
    static func require() throws {
        guard access(python, X_OK) == 0 else {
            let reason = "\(python) is missing: run `make test` (it creates the virtual environment with h2)"
            if ProcessInfo.processInfo.environment["CI"] != nil { throw HarnessError(reason) }
            Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    /// Cancels the test (with a warning) when the venv has no `kubernetes` package.
    static func requireKubernetesClient() throws {
        let check = try E2E.run([python, "-c", "import kubernetes"], timeout: 30)
        guard check.status == 0 else {
            let reason = "the kubernetes package is not in the venv: run `make venv`"
            Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    /// Runs an h2peer command against `relay` and returns its last line as JSON.
    static func h2(_ command: String, _ relay: RelayProcess, _ arguments: [String] = [], timeout: Double = 60,
                   prefix: [String] = []) throws -> [String: Any] {
        let result = try E2E.run(prefix + [python, h2peer, command, "127.0.0.1", "\(relay.port)"] + arguments, timeout: timeout)
        guard let line = result.stdout.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw HarnessError("h2peer \(command) printed no result (status \(result.status))\n\(result.stdout)\n\(result.stderr)")
        }
        return object
    }
}

/// Raw HTTP/1.1 to a relay: sends `request` in one write and returns the status of the answer
/// (nil when the connection closed without one).
func rawStatus(_ relay: RelayProcess, _ request: [UInt8], timeout: Double = 10) throws -> (status: Int?, text: String) {
    let fd = try Net.connect("127.0.0.1", relay.port)
    defer { close(fd) }
    var offset = 0
    while offset < request.count {
        let written = request.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { break }
        offset += written
    }
    shutdown(fd, Int32(SHUT_WR))
    var answer: [UInt8] = []
    let deadline = Date().addingTimeInterval(timeout)
    var chunk = [UInt8](repeating: 0, count: 65536)
    while Date() < deadline && answer.count < 1 << 20 {
        var probe = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&probe, 1, 100) <= 0 { continue }
        let count = read(fd, &chunk, chunk.count)
        if count <= 0 { break }
        answer += chunk[..<count]
    }
    let text = String(decoding: answer, as: UTF8.self)
    let parts = text.split(separator: " ", maxSplits: 2)
    let status = parts.count >= 2 && parts[0].hasPrefix("HTTP/1.") ? Int(parts[1]) : nil
    return (status, text)
}

extension Child {
    /// Every descriptor the process holds (sockets, pipes, files).
    func openFiles() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? -1
    }
}
