import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// An IPv4 or IPv6 address with a port, held by value.
public struct SocketAddress: CustomStringConvertible, Sendable {
    public var storage = sockaddr_storage()
    public var length: socklen_t = 0

    public init() {}

    /// Parses a numeric IPv4 or IPv6 address (no brackets).
    public init?(ip: String, port: Int) {
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, ip, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeBytes(of: v4) { raw in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            return
        }
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET6, ip, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeBytes(of: v6) { raw in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            return
        }
        return nil
    }

    public var family: Int32 { Int32(storage.ss_family) }

    public var port: Int {
        get {
            withUnsafeBytes(of: storage) { raw in
                family == AF_INET6
                    ? Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
                    : Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
            }
        }
        set {
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: UInt16(newValue).bigEndian, toByteOffset: 2, as: UInt16.self)
            }
        }
    }

    public var ip: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                _ = inet_ntop(AF_INET6, raw.baseAddress! + 8, &text, socklen_t(text.count))
            } else {
                _ = inet_ntop(AF_INET, raw.baseAddress! + 4, &text, socklen_t(text.count))
            }
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `127.0.0.1:5000` or `[::1]:5000`.
    public var description: String { family == AF_INET6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }

    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    /// Resolves a host name or numeric address to the addresses to try, IPv4 first.
    public static func resolve(_ host: String, port: Int) -> [SocketAddress] {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let numeric = SocketAddress(ip: bare, port: port) { return [numeric] }
        if bare == "localhost" {
            return [SocketAddress(ip: "127.0.0.1", port: port)!, SocketAddress(ip: "::1", port: port)!]
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(bare, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var result: [SocketAddress] = []
        var node = list
        while let entry = node {
            var address = SocketAddress()
            let count = Int(entry.pointee.ai_addrlen)
            withUnsafeMutableBytes(of: &address.storage) { raw in
                raw.copyMemory(from: UnsafeRawBufferPointer(start: entry.pointee.ai_addr, count: count))
            }
            address.length = entry.pointee.ai_addrlen
            address.port = port
            if address.family == AF_INET || address.family == AF_INET6 { result.append(address) }
            node = entry.pointee.ai_next
        }
        return result.sorted { $0.family == AF_INET && $1.family != AF_INET }
    }
}

/// Socket set-up done once per socket, outside the data path.
public enum Sockets {
    public static func listen(_ address: SocketAddress, backlog: Int32 = 4096) throws -> FileDescriptor {
        let fd = try check("socket") { pf_socket_nonblock(address.family, Int32(SOCK_STREAM.rawValue)) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if address.family == AF_INET6 {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        do {
            _ = try check("bind", subject: address.description) { address.withSockaddr { bind(fd, $0, $1) } }
            _ = try check("listen", subject: address.description) { Glibc.listen(fd, backlog) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    public static func localAddress(_ fd: FileDescriptor) -> SocketAddress {
        var address = SocketAddress()
        address.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutableBytes(of: &address.storage) { raw in
            _ = getsockname(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &address.length)
        }
        return address
    }

    /// The address of the connected peer (an empty address when the socket has none).
    public static func peerAddress(_ fd: FileDescriptor) -> SocketAddress {
        var address = SocketAddress()
        address.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutableBytes(of: &address.storage) { raw in
            if getpeername(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &address.length) != 0 {
                address.length = 0
            }
        }
        return address
    }

    public static func socket(for address: SocketAddress) throws -> FileDescriptor {
        try check("socket") { pf_socket_nonblock(address.family, Int32(SOCK_STREAM.rawValue)) }
    }

    public static func setBlocking(_ fd: FileDescriptor, _ blocking: Bool) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK)
    }

    public static func noDelay(_ fd: FileDescriptor) { _ = pf_tcp_nodelay(fd) }

    /// Closing after this sends a reset instead of a FIN.
    public static func resetOnClose(_ fd: FileDescriptor) { _ = pf_set_linger_zero(fd) }

    public static func shutdownWrite(_ fd: FileDescriptor) { _ = shutdown(fd, Int32(SHUT_WR)) }

    public static func socketError(_ fd: FileDescriptor) -> Int32 {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        return code
    }
}

/// Process-wide set-up every command does first.
public enum Process {
    /// A write to a reset peer must be an error, not a silent death.
    public static func ignoreBrokenPipes() { _ = pf_ignore_sigpipe() }

    /// Thousands of streams need thousands of descriptors.
    @discardableResult
    public static func raiseOpenFileLimit() -> (soft: UInt64, hard: UInt64) {
        var soft: UInt64 = 0, hard: UInt64 = 0
        _ = pf_raise_nofile_limit(&soft, &hard)
        return (soft, hard)
    }
}
