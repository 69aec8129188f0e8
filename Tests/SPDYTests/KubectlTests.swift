import Foundation
import Glibc
import XCTest
@testable import SPDY

/// The real peer: kubectl 1.27 (plain SPDY only) against a tiny API server in this test, whose
/// upgraded connection is served by `SPDYSession` and `PortForwardPairs`. One thread, one poll
/// loop, as the relay will be.
final class KubectlTests: XCTestCase {
    static let kubectl = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27"

    func testKubectlPortForwardOverSPDY() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.kubectl) else {
            throw XCTSkip("\(Self.kubectl) is not installed")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spdy-kubectl-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let server = try FakeKubernetes()
        defer { server.close() }
        let localPort = try freePort()
        let kubeconfig = directory.appendingPathComponent("kubeconfig")
        try """
        apiVersion: v1
        kind: Config
        clusters:
        - name: test
          cluster: {server: "http://127.0.0.1:\(server.port)"}
        contexts:
        - name: test
          context: {cluster: test, user: test, namespace: default}
        current-context: test
        users:
        - name: test
          user: {}
        """.write(to: kubeconfig, atomically: true, encoding: .utf8)

        let outputPath = directory.appendingPathComponent("kubectl.out").path
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.kubectl)
        process.arguments = ["--kubeconfig", kubeconfig.path, "port-forward", "pod/web", "\(localPort):80"]
        process.environment = ["HOME": directory.path, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle(forWritingAtPath: outputPath)
        process.standardError = process.standardOutput
        try process.run()
        defer {
            process.terminate()
            process.waitUntilExit()
        }

        let message = "hello through spdy"
        var local: Int32 = -1
        var echoed = ""
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, echoed.utf8.count < message.utf8.count {
            var fds = server.pollDescriptors()
            if local >= 0 { fds.append(pollfd(fd: local, events: Int16(POLLIN), revents: 0)) }
            _ = poll(&fds, nfds_t(fds.count), 50)
            for entry in fds where entry.revents != 0 {
                if entry.fd == local {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let count = read(local, &buffer, buffer.count)
                    if count > 0 { echoed += String(decoding: buffer[..<count], as: UTF8.self) }
                } else {
                    try server.ready(entry.fd)
                }
            }
            let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
            if local < 0, output.contains("Forwarding from 127.0.0.1:\(localPort)") {
                local = try connectLocal(port: localPort)
                XCTAssertEqual(write(local, message, message.utf8.count), message.utf8.count)
            }
            if !process.isRunning { break }
        }
        // The pod's side ends: FIN on the error stream, then on the data stream (a kubelet's order);
        // kubectl then closes the local connection and keeps forwarding.
        var localClosed = false
        if local >= 0, echoed == message, let pair = server.pairs.first {
            server.endForward(pair)
            let closeDeadline = Date().addingTimeInterval(5)
            while Date() < closeDeadline, !localClosed {
                var fds = server.pollDescriptors() + [pollfd(fd: local, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, nfds_t(fds.count), 50)
                for entry in fds where entry.revents != 0 {
                    if entry.fd == local {
                        var buffer = [UInt8](repeating: 0, count: 4096)
                        localClosed = read(local, &buffer, buffer.count) <= 0
                    } else {
                        try server.ready(entry.fd)
                    }
                }
            }
        }
        if local >= 0 { Glibc.close(local) }
        let stillRunning = process.isRunning
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""

        XCTAssertEqual(server.requests.first(where: { $0.hasPrefix("POST") }),
                       "POST /api/v1/namespaces/default/pods/web/portforward", "kubectl's output:\n\(output)")
        XCTAssertNil(server.sessionError, "\(server.sessionError.map { "\($0)" } ?? "")")
        let opened = server.opened
        XCTAssertEqual(opened.count, 2, "kubectl's output:\n\(output)")
        guard opened.count == 2 else { return }
        XCTAssertEqual(opened[0].headers["streamtype"], "error")
        XCTAssertEqual(opened[0].headers["port"], "80")
        XCTAssertEqual(opened[0].headers["requestid"], "0")
        XCTAssertEqual(opened[1].headers["streamtype"], "data")
        XCTAssertEqual(opened[1].headers["port"], "80")
        XCTAssertEqual(opened[1].headers["requestid"], "0")
        XCTAssertEqual(opened[1].stream, opened[0].stream + 2)
        XCTAssertEqual(server.pairs, [PortForwardPairs.Pair(key: .requestID("0"), port: 80,
                                                            errorStream: opened[0].stream, dataStream: opened[1].stream)])
        XCTAssertEqual(server.received, message, "bytes written to kubectl's local port arrive as DATA")
        XCTAssertEqual(echoed, message, "DATA sent back arrives at kubectl's local port")
        XCTAssertTrue(localClosed, "kubectl closes the local connection after the error and data streams' FINs")
        XCTAssertTrue(stillRunning, "one forward ending cleanly does not end kubectl:\n\(output)")
    }
}

/// Answers what kubectl asks before a port-forward (reference, section 1) and serves the SPDY
/// upgrade (section 3) with `SPDYSession`, echoing the data stream.
private final class FakeKubernetes: SPDYSessionDelegate {
    let listener: Int32
    let port: UInt16
    private var connections: [Int32: [UInt8]] = [:]
    private var upgraded: [Int32: SPDYSession] = [:]
    private var pairing = PortForwardPairs()
    private var dataStreams: Set<UInt32> = []
    private var writing: Int32 = -1

    private(set) var requests: [String] = []
    private(set) var opened: [(stream: UInt32, headers: HeaderBlock)] = []
    private(set) var pairs: [PortForwardPairs.Pair] = []
    private(set) var received = ""
    private(set) var sessionError: Error?

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 16) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        self.listener = listener
        port = UInt16(bigEndian: address.sin_port)
    }

    func close() {
        for fd in connections.keys { Glibc.close(fd) }
        Glibc.close(listener)
    }

    func pollDescriptors() -> [pollfd] {
        [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            + connections.keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    }

    func ready(_ fd: Int32) throws {
        if fd == listener {
            let connection = accept(listener, nil, nil)
            if connection >= 0 { connections[connection] = [] }
            return
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else {
            Glibc.close(fd)
            connections[fd] = nil
            upgraded[fd] = nil
            return
        }
        if let session = upgraded[fd] {
            feed(session, Array(buffer[..<count]), fd: fd)
            return
        }
        connections[fd]! += buffer[..<count]
        answerRequests(fd)
    }

    private func feed(_ session: SPDYSession, _ bytes: [UInt8], fd: Int32) {
        writing = fd
        do {
            try bytes.withUnsafeBytes { try session.receive($0) }
        } catch {
            sessionError = error
        }
        send(fd, session.takeOutput())
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            sent += count
        }
    }

    private func answerRequests(_ fd: Int32) {
        while let end = connections[fd]!.firstRange(of: Array("\r\n\r\n".utf8)) {
            let head = String(decoding: connections[fd]![..<end.lowerBound], as: UTF8.self)
            connections[fd]!.removeSubrange(..<end.upperBound)
            let lines = head.components(separatedBy: "\r\n")
            let parts = lines[0].split(separator: " ")
            guard parts.count == 3 else { return send(fd, Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8)) }
            let method = String(parts[0])
            let path = String(parts[1].split(separator: "?", maxSplits: 1)[0])
            requests.append("\(method) \(path)")
            let upgrade = lines.contains { $0.lowercased() == "upgrade: spdy/3.1" }
            if method == "POST", path.hasSuffix("/portforward"), upgrade {
                // Reference section 3: the 101, then nothing until the client speaks.
                send(fd, Array(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                    + "X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n").utf8))
                let session = try! SPDYSession(delegate: self)
                upgraded[fd] = session
                let rest = connections[fd]!
                connections[fd] = []
                if !rest.isEmpty { feed(session, rest, fd: fd) }
                return
            }
            let (status, body) = answer(method, path)
            send(fd, Array(("HTTP/1.1 \(status)\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)").utf8))
        }
    }

    private func answer(_ method: String, _ path: String) -> (String, String) {
        switch path {
        case "/api": return ("200 OK", #"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#)
        case "/apis": return ("200 OK", #"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#)
        case "/api/v1":
            return ("200 OK", #"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"]}]}"#)
        case "/api/v1/namespaces/default/pods/web":
            return ("200 OK", #"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"1"},"spec":{"containers":[{"name":"web","image":"web","ports":[{"containerPort":80,"protocol":"TCP"}]}]},"status":{"phase":"Running"}}"#)
        default:
            return ("404 Not Found", #"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#)
        }
    }

    func endForward(_ pair: PortForwardPairs.Pair) {
        guard let session = upgraded[writing] else { return }
        for step in PortForwardPairs.endSteps(for: pair) {
            switch step {
            case .write(let stream, let text): try! session.sendData(stream: stream, Array(text.utf8), fin: false)
            case .finish(let stream): if session.isWritable(stream) { try! session.finish(stream: stream) }
            }
        }
        send(writing, session.takeOutput())
    }

    func session(_ session: SPDYSession, _ event: SPDYEvent) {
        switch event {
        case .synStream(let stream, _, _, let headers, _):
            opened.append((stream, headers))
            switch pairing.opened(stream: stream, headers: headers, now: 0) {
            case .reply:
                try! session.synReply(stream: stream)
            case .replyAndForward(let pair):
                try! session.synReply(stream: stream)
                pairs.append(pair)
                dataStreams.insert(pair.dataStream)
            case .reset(let status, _):
                session.reset(stream: stream, status: status)
            }
        case .data(let stream, let bytes) where dataStreams.contains(stream):
            received += String(decoding: bytes, as: UTF8.self)
            // The echo: a DATA header from the session, the payload from our own memory.
            let header = try! session.dataHeader(stream: stream, count: bytes.count, fin: false)
            send(writing, session.takeOutput() + header.bytes + Array(bytes))
        default:
            break
        }
    }
}

private func freePort() throws -> UInt16 {
    let probe = try FakeKubernetes()
    defer { probe.close() }
    return probe.port
}

private func connectLocal(port: UInt16) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = port.bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return fd
}
