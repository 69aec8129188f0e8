import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Blocking-free socket helpers for the tests: connections are non-blocking and every wait is a
/// poll with a deadline.
enum Net {
    /// Connects to 127.0.0.1 or ::1 (or any numeric address).
    static func connect(_ host: String, _ port: Int, timeout: Double = 10) throws -> Int32 {
        let isV6 = host.contains(":")
        let fd = socket(isV6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
        var result: Int32
        if isV6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET6, host, &address.sin6_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &address.sin_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        if result != 0 && errno != EINPROGRESS {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HarnessError("connect to \(host) port \(port): \(reason)")
        }
        var probe = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&probe, 1, Int32(timeout * 1000))
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        // Connected, then reset at once (a forwarder refusing that connection can be that fast):
        // the caller sees the end when it reads.
        if ready > 0 && code == ECONNRESET { return fd }
        if ready <= 0 || code != 0 {
            close(fd)
            throw HarnessError("connect to \(host) port \(port): \(ready <= 0 ? "timed out" : String(cString: strerror(code)))")
        }
        return fd
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let file = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        precondition(file >= 0)
        defer { close(file) }
        var offset = 0
        bytes.withUnsafeMutableBytes { raw in
            while offset < count {
                let got = Glibc.read(file, raw.baseAddress! + offset, count - offset)
                precondition(got > 0)
                offset += got
            }
        }
        return bytes
    }

    static func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
    }

    /// Where two byte strings first differ, for messages.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String {
        let common = min(a.count, b.count)
        var index = 0
        while index < common && a[index] == b[index] { index += 1 }
        return "sent \(a.count) bytes, received \(b.count); first difference at offset \(index)"
    }
}

/// One connection of an exchange: what to send, what came back.
struct Flow {
    let fd: Int32
    let payload: [UInt8]
    /// Shut down the sending side after the payload and read until end of file; otherwise stop
    /// after as many bytes as were sent.
    let halfClose: Bool
    var sent = 0
    var received: [UInt8] = []
    var shutDown = false
    var endOfFile = false
    var error: String?

    init(fd: Int32, payload: [UInt8], halfClose: Bool = false) {
        self.fd = fd
        self.payload = payload
        self.halfClose = halfClose
        received.reserveCapacity(payload.count)
    }

    var done: Bool {
        if error != nil { return true }
        return halfClose ? endOfFile : (received.count >= payload.count || endOfFile)
    }
}

extension Net {
    /// A connection to the forwarder's `port` while it has no session (the relay is down), with
    /// a few bytes written: they wait for the next session. Returns it and those bytes.
    static func connectDuringOutage(_ port: Int) throws -> (Int32, [UInt8]) {
        let fd = try Net.connect("127.0.0.1", port)
        let early = Array("made during the outage".utf8)
        #expect(Glibc.write(fd, early, early.count) == early.count)
        usleep(500_000)
        return (fd, early)
    }

    /// `count` connections to `port` at once, each echoed whole: distinct payloads of distinct
    /// lengths (`size` + index x `step` bytes after a prefix naming it), so that a byte from
    /// another connection shows.
    static func expectConcurrentEchoes(_ port: Int, count: Int, size: Int, step: Int, timeout: Double) throws {
        var flows: [Flow] = []
        defer { for flow in flows { close(flow.fd) } }
        for index in 0..<count {
            var payload = Array("connection \(index):".utf8)
            payload += Net.randomBytes(size + index * step)
            flows.append(Flow(fd: try Net.connect("127.0.0.1", port), payload: payload))
        }
        try Net.exchange(&flows, timeout: timeout)
        for (index, flow) in flows.enumerated() {
            #expect(flow.error == nil, "connection \(index): \(flow.error ?? "")")
            #expect(Net.same(flow.payload, flow.received), "connection \(index): \(Net.firstDifference(flow.payload, flow.received))")
        }
    }

    /// Sends every flow's payload while reading what comes back, all at once in one poll loop,
    /// until every flow is done or the deadline passes (then throws).
    static func exchange(_ flows: inout [Flow], timeout: Double) throws {
        let chunk = 256 * 1024
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 16)
        defer { scratch.deallocate() }
        let deadline = Date().addingTimeInterval(timeout)
        var descriptors: [pollfd] = []
        var indices: [Int] = []
        while true {
            descriptors.removeAll(keepingCapacity: true)
            indices.removeAll(keepingCapacity: true)
            for (index, flow) in flows.enumerated() where !flow.done {
                var events = Int16(POLLIN)
                if flow.sent < flow.payload.count { events |= Int16(POLLOUT) }
                descriptors.append(pollfd(fd: flow.fd, events: events, revents: 0))
                indices.append(index)
            }
            if descriptors.isEmpty { return }
            if Date() >= deadline {
                let pending = indices.prefix(5).map { index in
                    "#\(index): sent \(flows[index].sent)/\(flows[index].payload.count), received \(flows[index].received.count)"
                }
                throw HarnessError("exchange timed out after \(timeout) s with \(indices.count) connections unfinished: \(pending.joined(separator: "; "))")
            }
            let ready = poll(&descriptors, nfds_t(descriptors.count), 100)
            if ready <= 0 { continue }
            for (slot, descriptor) in descriptors.enumerated() where descriptor.revents != 0 {
                let index = indices[slot]
                if flows[index].sent < flows[index].payload.count,
                   descriptor.revents & Int16(POLLOUT | POLLERR | POLLHUP) != 0 {
                    let count = min(chunk, flows[index].payload.count - flows[index].sent)
                    let written = flows[index].payload.withUnsafeBytes {
                        send(flows[index].fd, $0.baseAddress! + flows[index].sent, count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                    }
                    if written > 0 {
                        flows[index].sent += written
                    } else if written < 0 && errno != EAGAIN && errno != EWOULDBLOCK {
                        flows[index].error = "send: \(String(cString: strerror(errno)))"
                        continue
                    }
                }
                if flows[index].halfClose && !flows[index].shutDown && flows[index].sent == flows[index].payload.count {
                    flows[index].shutDown = true
                    shutdown(flows[index].fd, Int32(SHUT_WR))
                }
                if descriptor.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 {
                    let got = recv(flows[index].fd, scratch, chunk, Int32(MSG_DONTWAIT))
                    if got > 0 {
                        flows[index].received.append(contentsOf: UnsafeRawBufferPointer(start: scratch, count: got))
                    } else if got == 0 {
                        flows[index].endOfFile = true
                    } else if errno != EAGAIN && errno != EWOULDBLOCK {
                        flows[index].error = "recv: \(String(cString: strerror(errno)))"
                    }
                }
            }
        }
    }

    /// Sends `payload` on a new connection and reads the echo (with a half-close when asked).
    static func echo(_ host: String, _ port: Int, _ payload: [UInt8], halfClose: Bool = false, timeout: Double = 30) throws -> [UInt8] {
        let fd = try connect(host, port)
        defer { close(fd) }
        var flows = [Flow(fd: fd, payload: payload, halfClose: halfClose)]
        try exchange(&flows, timeout: timeout)
        if let error = flows[0].error { throw HarnessError("echo through \(host) port \(port): \(error)") }
        return flows[0].received
    }

    /// Reads until end of file or an error: "eof", "reset" (ECONNRESET) or the bytes' count.
    static func readUntilClosed(_ fd: Int32, timeout: Double) -> (outcome: String, bytes: Int) {
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 65536)
        var total = 0
        while Date() < deadline {
            var probe = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&probe, 1, 100) <= 0 { continue }
            let got = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if got > 0 { total += got; continue }
            if got == 0 { return ("eof", total) }
            if errno == EAGAIN || errno == EWOULDBLOCK { continue }
            return (errno == ECONNRESET ? "reset" : String(cString: strerror(errno)), total)
        }
        return ("still open after \(timeout) s", total)
    }

    /// Reads exactly `count` bytes (or throws at the deadline).
    static func read(_ fd: Int32, count: Int, timeout: Double) throws -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeout)
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            if Date() >= deadline { throw HarnessError("read \(offset) of \(count) bytes in \(timeout) s") }
            var probe = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&probe, 1, 100) <= 0 { continue }
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_DONTWAIT)) }
            if got > 0 { offset += got; continue }
            if got == 0 { throw HarnessError("end of file after \(offset) of \(count) bytes") }
            if errno != EAGAIN && errno != EWOULDBLOCK { throw HarnessError("recv: \(String(cString: strerror(errno)))") }
        }
        return bytes
    }

    /// Writes as much as the connection takes for `seconds`, without blocking; returns the count.
    static func writeWhileAccepted(_ fd: Int32, seconds: Double, limit: Int = .max) -> Int {
        let chunk = [UInt8](repeating: 0x5A, count: 64 * 1024)
        let end = Date().addingTimeInterval(seconds)
        var total = 0
        while Date() < end && total < limit {
            let count = min(chunk.count, limit - total)
            let written = chunk.withUnsafeBytes { send(fd, $0.baseAddress!, count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if written > 0 { total += written; continue }
            if written < 0 && errno != EAGAIN && errno != EWOULDBLOCK { break }
            var probe = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&probe, 1, 50)
        }
        return total
    }
}
