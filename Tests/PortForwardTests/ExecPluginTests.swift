import Foundation
import Testing
@testable import PortForward

/// Exec credential plugins as real processes: shell scripts that print an ExecCredential.
@Suite("Exec credential plugin")
struct ExecPluginTests {
    static let v1 = "client.authentication.k8s.io/v1"

    /// A temporary directory with `plugin.sh` (the given body) in it.
    static func plugin(_ body: String) throws -> (directory: URL, path: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("exec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("plugin.sh").path
        // Written through a CLOEXEC descriptor: a process another test spawns meanwhile must not
        // inherit it open for writing, or running the script fails with ETXTBSY.
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        try #require(fd >= 0)
        let bytes = Array(("#!/bin/sh\n" + body).utf8)
        #expect(write(fd, bytes, bytes.count) == bytes.count)
        close(fd)
        return (directory, path)
    }

    @Test("Run once while the token is valid, again after it expires; env and KUBERNETES_EXEC_INFO reach it")
    func cachedUntilExpiry() throws {
        let (directory, path) = try Self.plugin("""
            echo run >> "$(dirname "$0")/runs"
            printf '%s' "$KUBERNETES_EXEC_INFO" > "$(dirname "$0")/info"
            n=$(wc -l < "$(dirname "$0")/runs")
            printf '{"kind":"ExecCredential","apiVersion":"\(Self.v1)","status":{"token":"%s-%s","expirationTimestamp":"2026-11-28T12:00:00Z"}}' "$PREFIX" "$n"
            """)
        defer { try? FileManager.default.removeItem(at: directory) }
        var cluster = Kubeconfig.Cluster()
        cluster.server = "https://10.0.0.1:6443"
        let plugin = ExecPlugin(exec: Kubeconfig.Exec(apiVersion: Self.v1, command: path, env: [.init(name: "PREFIX", value: "tok")],
                                                      provideClusterInfo: true), cluster: cluster)
        let expiry = 1_795_867_200
        #expect(try plugin.credential(now: expiry - 100).token == "tok-1")
        #expect(try plugin.credential(now: expiry - 1).token == "tok-1")
        #expect(plugin.runs == 1)
        #expect(try plugin.credential(now: expiry).token == "tok-2")
        #expect(plugin.runs == 2)
        plugin.forget()
        #expect(try plugin.credential(now: expiry - 100).token == "tok-3")
        let runs = try String(contentsOfFile: directory.appendingPathComponent("runs").path, encoding: .utf8)
        #expect(runs == "run\nrun\nrun\n")
        let info = try String(contentsOfFile: directory.appendingPathComponent("info").path, encoding: .utf8)
        #expect(info == #"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false,"cluster":{"server":"https://10.0.0.1:6443"}}}"#)
    }

    @Test("Failures are one line: exit status, a missing command with its install hint, a wrong answer, a hang")
    func failures() throws {
        let (directory, failing) = try Self.plugin("echo 'token expired, log in again' >&2\nexit 3\n")
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(throws: ExecPlugin.Failure.self) {
            try ExecPlugin(exec: .init(apiVersion: Self.v1, command: failing), cluster: nil).credential()
        }
        do {
            _ = try ExecPlugin(exec: .init(apiVersion: Self.v1, command: failing), cluster: nil).credential()
        } catch {
            #expect("\(error)".hasSuffix("exited with status 3"), "\(error)")
        }
        do {
            _ = try ExecPlugin(exec: .init(apiVersion: Self.v1, command: "/nonexistent/gke-gcloud-auth-plugin",
                                           installHint: "Install gke-gcloud-auth-plugin"), cluster: nil).credential()
            Issue.record("a missing plugin gave a credential")
        } catch {
            #expect("\(error)".contains("no such file or directory"), "\(error)")
            #expect("\(error)".contains("(Install gke-gcloud-auth-plugin)"), "\(error)")
        }
        let wrong = try Self.plugin(#"echo '{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","status":{"token":"t"}}'"#)
        defer { try? FileManager.default.removeItem(at: wrong.directory) }
        do {
            _ = try ExecPlugin(exec: .init(apiVersion: Self.v1, command: wrong.path), cluster: nil).credential()
            Issue.record("a v1beta1 answer to a v1 request was taken")
        } catch {
            #expect("\(error)".contains("not \"client.authentication.k8s.io/v1\""), "\(error)")
        }
        let hang = try Self.plugin("exec sleep 30\n")
        defer { try? FileManager.default.removeItem(at: hang.directory) }
        let plugin = ExecPlugin(exec: .init(apiVersion: Self.v1, command: hang.path), cluster: nil)
        plugin.timeout = 0.3
        let started = Date()
        do {
            _ = try plugin.credential()
            Issue.record("a hanging plugin gave a credential")
        } catch {
            #expect("\(error)".contains("no answer within"), "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test("A plugin that closes its output and keeps running is killed at the deadline; a failed plugin is not run again within the backoff")
    func boundedAndBackedOff() throws {
        // Answers, closes its output, and lingers: its exit is awaited only until the deadline.
        let (directory, lingering) = try Self.plugin("""
            echo run >> "$(dirname "$0")/runs"
            printf '{"kind":"ExecCredential","apiVersion":"\(Self.v1)","status":{"token":"t"}}'
            exec >&- 2>&-
            sleep 30
            """)
        defer { try? FileManager.default.removeItem(at: directory) }
        let plugin = ExecPlugin(exec: .init(apiVersion: Self.v1, command: lingering), cluster: nil)
        plugin.timeout = 0.5
        let started = Date()
        #expect(throws: ExecPlugin.Failure.self) { try plugin.credential() }
        #expect(Date().timeIntervalSince(started) < 5)
        // Failed: within the backoff the failure is given again without a run.
        #expect(throws: ExecPlugin.Failure.self) { try plugin.credential() }
        #expect(plugin.runs == 1)
        plugin.failureBackoff = 0
        #expect(throws: ExecPlugin.Failure.self) { try plugin.credential() }
        #expect(plugin.runs == 2)
    }
}
