import CLinuxShim
import CSSL
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What the handshake settled: the ALPN protocol and the verified client certificate's subject.
public struct TLSPeer: Sendable {
    /// "h2", "http/1.1", or nil when the client offered no protocol we speak.
    public var alpn: String?
    /// The client certificate's CN and each O, when the relay verified one (`--client-ca-file`).
    public var subject: (commonName: String, organizations: [String])?
}

/// One TLS connection: the outer TCP socket and an `AF_UNIX` socketpair. The pump moves
/// ciphertext between the socket and OpenSSL's memory BIOs, and plaintext between
/// `SSL_read`/`SSL_write` and its end of the pair, every read and write the reactor's (no
/// OpenSSL call touches a socket). The other end of the pair is what the rest of the program
/// reads and writes as if it were the TCP connection.
///
/// Memory is bounded per connection: at most one pooled buffer in flight per direction (the
/// next is read only when the previous is written), plus what OpenSSL holds of one buffer's
/// ciphertext in its memory BIOs. Half-close maps both ways: end of file on the inner end sends
/// close_notify and then shuts the socket's write side; close_notify (or end of file) from the
/// peer shuts the inner end's write side. An error on either side closes both.
public final class TLSConnection: CompletionHandler {
    public enum Role: Sendable { case server, client }

    public let reactor: ReactorBackend
    public let role: Role
    /// The TCP socket.
    public let outer: FileDescriptor
    /// Our end of the socketpair (-1 until the handshake is done).
    public private(set) var inner: FileDescriptor = -1
    /// Who is at the other end, for log lines.
    public let peer: String
    /// Seconds the handshake may take, and the grace a closed connection has to finish closing.
    public let deadlineSeconds: Double
    /// Server role: the handshake is done; the fd is the other end of the pair, for the program.
    public var onEstablished: ((FileDescriptor, TLSPeer) -> Void)?
    /// Both sides are closed (after an error, a refusal, a failed handshake or an orderly end).
    public var onClosed: ((TLSConnection) -> Void)?
    /// One line per failed handshake or connection error.
    public var log: (String) -> Void = { _ in }

    private let ssl: OpaquePointer
    private let input: OpaquePointer
    private let output: OpaquePointer
    private enum Phase { case handshake, open, closed }
    private var phase: Phase
    private var timer: TimerID = 0
    private var timerArmed = false
    private var sniffed = false

    private struct InFlight {
        var buffer: BufferID
        var offset: Int
        var count: Int
    }
    /// Ciphertext being written to the socket.
    private var outerWrite: InFlight?
    /// Plaintext being written to the inner end.
    private var innerWrite: InFlight?
    private var outerReceiving = false
    private var innerReceiving = false
    /// The socket's receive side said end of file.
    private var outerEndOfFile = false
    /// No more plaintext from the peer (close_notify or end of file): the inner write side is shut.
    private var outerReadEnded = false
    /// The inner end said end of file: close_notify is queued.
    private var innerReadEnded = false
    private var outerWriteShut = false

    private enum Tag: UInt32 { case outerReceive, outerWrite, innerReceive, innerWrite, timer }

    /// The server side, before its handshake: `start()` runs it.
    public init(serverSocket fd: FileDescriptor, peer: String, context: TLSContext, reactor: ReactorBackend,
                deadlineSeconds: Double) throws {
        precondition(context.isServer)
        (ssl, input, output) = try context.makeSession()
        self.reactor = reactor
        self.role = .server
        self.outer = fd
        self.peer = peer
        self.deadlineSeconds = deadlineSeconds
        phase = .handshake
        // The pump writes whole records, flushed when it has them: Nagle would only hold a
        // small one (a stream's HEADERS, a 4-byte echo) for the peer's delayed ACK, 40 ms.
        Sockets.noDelay(fd)
    }

    /// The client side, its handshake done (`TLSClientHandshake`): `openInner()` starts the pump.
    public init(established session: TLSClientHandshake.Established, reactor: ReactorBackend, peer: String,
                deadlineSeconds: Double) {
        (ssl, input, output) = (session.ssl, session.input, session.output)
        session.handedOver = true
        self.reactor = reactor
        self.role = .client
        self.outer = session.fd
        self.peer = peer
        self.deadlineSeconds = deadlineSeconds
        phase = .open
        sniffed = true
        Sockets.noDelay(session.fd)
    }

    /// Server: waits for the ClientHello, within the deadline.
    public func start() {
        timer = reactor.timer(nanoseconds: UInt64(deadlineSeconds * 1e9), handler: self, tag: Tag.timer.rawValue)
        timerArmed = true
        receiveOuter()
    }

    /// Client: the socketpair, the pump started; returns the end the program uses.
    public func openInner() throws -> FileDescriptor {
        let theirs = try makePair()
        advance()
        return theirs
    }

    private func makePair() throws -> FileDescriptor {
        var pair: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &pair) == 0 else {
            throw TLSError("socketpair: \(String(cString: strerror(pf_errno())))")
        }
        inner = pair[0]
        return pair[1]
    }

    // MARK: completions

    public func complete(_ completion: Completion) {
        let tag = Tag(rawValue: completion.tag)!
        let result = Int(completion.result)
        if phase == .closed {
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            return
        }
        switch tag {
        case .timer:
            timerArmed = false
            if phase == .handshake {
                return fail("not finished within \(deadlineSeconds) s")
            }
            // The grace after an orderly close has passed: the peer did not close its side.
            return finish()
        case .outerReceive:
            outerReceiving = false
            if result < 0 { return phase == .handshake ? fail(SystemError.reason(Int32(-result))) : abort("read: \(SystemError.reason(Int32(-result)))") }
            if result == 0 {
                outerEndOfFile = true
                return advance()
            }
            let pointer = reactor.buffers.pointer(completion.buffer)
            if !sniffed {
                sniffed = true
                // A TLS record starts with its content type, 22 (handshake) for a ClientHello.
                if pointer.load(as: UInt8.self) != 0x16 {
                    reactor.buffers.release(completion.buffer)
                    return refusePlaintext()
                }
            }
            BIO_write(input, pointer, Int32(result))
            reactor.buffers.release(completion.buffer)
            advance()
        case .outerWrite:
            guard var write = outerWrite else { return }
            if result <= 0 { return abort("write: \(SystemError.reason(Int32(-result)))") }
            write.offset += result
            if write.offset < write.count {
                outerWrite = write
                return issueOuterWrite()
            }
            reactor.buffers.release(write.buffer)
            outerWrite = nil
            advance()
        case .innerReceive:
            innerReceiving = false
            if result < 0 { return abort("inner read: \(SystemError.reason(Int32(-result)))") }
            if result == 0 {
                innerReadEnded = true
                ERR_clear_error()
                _ = SSL_shutdown(ssl)
                return advance()
            }
            ERR_clear_error()
            let written = SSL_write(ssl, reactor.buffers.pointer(completion.buffer), Int32(result))
            reactor.buffers.release(completion.buffer)
            if written <= 0 { return abort("SSL_write: \(OpenSSLErrors.drain() ?? "failed")") }
            advance()
        case .innerWrite:
            guard var write = innerWrite else { return }
            if result <= 0 { return abort("inner write: \(SystemError.reason(Int32(-result)))") }
            write.offset += result
            if write.offset < write.count {
                innerWrite = write
                return issueInnerWrite()
            }
            reactor.buffers.release(write.buffer)
            innerWrite = nil
            advance()
        }
    }

    // MARK: the pump

    /// Does everything that can be done now, then waits for what it needs next.
    private func advance() {
        if phase == .handshake {
            ERR_clear_error()
            let result = SSL_do_handshake(ssl)
            if result != 1 {
                let error = SSL_get_error(ssl, result)
                if error == SSL_ERROR_WANT_READ {
                    flushOuter()
                    if outerEndOfFile { return fail("closed by the client during the handshake") }
                    return receiveOuter()
                }
                return fail(handshakeFailure())
            }
            established()
            if phase != .open { return }
        }
        guard phase == .open else { return }
        // Plaintext towards the inner end, one buffer at a time.
        while innerWrite == nil && !outerReadEnded {
            // As many records as the buffer takes (SSL_read gives one record, 16 KiB at most, a
            // call), so that one write to the pair carries them all.
            let buffer = reactor.buffers.take()
            let start = reactor.buffers.pointer(buffer)
            let size = reactor.buffers.bufferSize
            var filled = 0
            var count: Int32 = 0
            while filled < size {
                ERR_clear_error()
                count = SSL_read(ssl, start + filled, Int32(size - filled))
                if count <= 0 { break }
                filled += Int(count)
            }
            if filled > 0 {
                // What stopped the filling (more wanted, close_notify, an error) is met again by
                // the next SSL_read, once this buffer is written.
                innerWrite = InFlight(buffer: buffer, offset: 0, count: filled)
                issueInnerWrite()
                break
            }
            reactor.buffers.release(buffer)
            let error = SSL_get_error(ssl, count)
            if error == SSL_ERROR_WANT_READ {
                if outerEndOfFile {
                    endOuterRead()
                } else if !outerReceiving {
                    receiveOuter()
                }
                break
            }
            if error == SSL_ERROR_ZERO_RETURN {
                endOuterRead()
                break
            }
            return abort("TLS: \(OpenSSLErrors.drain() ?? "error \(error)")")
        }
        flushOuter()
        // Plaintext from the inner end, read only once the previous buffer's ciphertext is written.
        let drained = outerWrite == nil && pf_bio_pending(output) == 0
        if !innerReadEnded && !innerReceiving && drained {
            innerReceiving = true
            reactor.receive(inner, handler: self, tag: Tag.innerReceive.rawValue)
        }
        if innerReadEnded && drained && !outerWriteShut {
            outerWriteShut = true
            Sockets.shutdownWrite(outer)
        }
        if outerReadEnded && outerWriteShut && innerWrite == nil {
            return finish()
        }
        if outerWriteShut && !timerArmed {
            // Both close_notify and FIN are sent: the peer has this long to close its side.
            timer = reactor.timer(nanoseconds: UInt64(deadlineSeconds * 1e9), handler: self, tag: Tag.timer.rawValue)
            timerArmed = true
        }
    }

    private func endOuterRead() {
        guard !outerReadEnded else { return }
        outerReadEnded = true
        Sockets.shutdownWrite(inner)
    }

    private func receiveOuter() {
        outerReceiving = true
        reactor.receive(outer, handler: self, tag: Tag.outerReceive.rawValue)
    }

    private func flushOuter() {
        guard outerWrite == nil, pf_bio_pending(output) > 0 else { return }
        let buffer = reactor.buffers.take()
        let count = BIO_read(output, reactor.buffers.pointer(buffer), Int32(reactor.buffers.bufferSize))
        guard count > 0 else {
            reactor.buffers.release(buffer)
            return
        }
        outerWrite = InFlight(buffer: buffer, offset: 0, count: Int(count))
        issueOuterWrite()
    }

    private func issueOuterWrite() {
        guard let write = outerWrite else { return }
        reactor.write(outer, from: reactor.buffers.pointer(write.buffer) + write.offset, count: write.count - write.offset,
                      handler: self, tag: Tag.outerWrite.rawValue)
    }

    private func issueInnerWrite() {
        guard let write = innerWrite else { return }
        reactor.write(inner, from: reactor.buffers.pointer(write.buffer) + write.offset, count: write.count - write.offset,
                      handler: self, tag: Tag.innerWrite.rawValue)
    }

    // MARK: the handshake's end

    private func established() {
        if timerArmed {
            reactor.cancelTimer(timer)
            timerArmed = false
        }
        let theirs: FileDescriptor
        do {
            theirs = try makePair()
        } catch {
            return fail("\(error)")
        }
        phase = .open
        var alpnText = [CChar](repeating: 0, count: 64)
        let alpn = pf_ssl_alpn(ssl, &alpnText, Int32(alpnText.count)) > 0 ? Self.text(alpnText) : nil
        var subject: (String, [String])?
        if let certificate = SSL_get1_peer_certificate(ssl) {
            defer { X509_free(certificate) }
            if SSL_get_verify_result(ssl) == X509_V_OK {
                // Each name whole, as Go reads it for kube-apiserver: a NUL inside does not end it
                // ("alice\0mallory" is not alice, "admins\0x" not the group admins), and a name
                // longer than the buffer is no identity at all rather than a shorter one.
                var field = [CChar](repeating: 0, count: 1024)
                var whole = true
                func entry(_ nid: Int32, _ index: Int32) -> String? {
                    let length = pf_x509_subject_text(certificate, nid, index, &field, Int32(field.count))
                    if length == -2 { whole = false }
                    guard length >= 0 else { return nil }
                    return String(decoding: field.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }
                let commonName = entry(NID_commonName, 0) ?? ""
                var organizations: [String] = []
                var index: Int32 = 0
                while let organization = entry(NID_organizationName, index) {
                    organizations.append(organization)
                    index += 1
                }
                if whole { subject = (commonName, organizations) }
            }
        }
        onEstablished?(theirs, TLSPeer(alpn: alpn, subject: subject))
    }

    private static func text(_ characters: [CChar]) -> String {
        String(decoding: characters.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// OpenSSL's reason, and the certificate check's when that is what failed.
    private func handshakeFailure() -> String {
        var reason = OpenSSLErrors.drain() ?? "handshake failed"
        let verify = SSL_get_verify_result(ssl)
        if verify != X509_V_OK, let text = X509_verify_cert_error_string(Int(verify)) {
            reason += " (client certificate: \(String(cString: text)))"
        }
        return reason
    }

    // MARK: ending

    /// A plaintext request on the TLS port: Go's answer, then the connection is closed.
    private func refusePlaintext() {
        log("TLS handshake from \(peer) failed: the client sent plain HTTP to the TLS port (answered 400)")
        let body = "Client sent an HTTP request to an HTTPS server.\n"
        let answer = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        // A few hundred bytes on a fresh socket: the kernel takes them at once.
        _ = Array(answer.utf8).withUnsafeBytes { Glibc.write(outer, $0.baseAddress!, $0.count) }
        // Unread request bytes would turn the close into a reset that loses the answer.
        Sockets.shutdownWrite(outer)
        finish()
    }

    /// A failed handshake: one line, the alert OpenSSL queued (best effort), both sides closed.
    private func fail(_ reason: String) {
        log("TLS handshake from \(peer) failed: \(reason)")
        var alert = [UInt8](repeating: 0, count: 512)
        let count = BIO_read(output, &alert, Int32(alert.count))
        if count > 0, outerWrite == nil { _ = Glibc.write(outer, alert, Int(count)) }
        finish()
    }

    /// A connection error after the handshake: both sides closed, the socket with a reset.
    private func abort(_ reason: String) {
        log("TLS connection \(peer): \(reason)")
        Sockets.resetOnClose(outer)
        finish()
    }

    /// Closes both sides; buffers a cancelled write may still read go back when it cannot.
    private func finish() {
        guard phase != .closed else { return }
        phase = .closed
        if timerArmed { reactor.cancelTimer(timer) }
        timerArmed = false
        let pool = reactor.buffers
        let outerBuffer = outerWrite?.buffer
        let innerBuffer = innerWrite?.buffer
        outerWrite = nil
        innerWrite = nil
        reactor.close(outer) { if let outerBuffer { pool.release(outerBuffer) } }
        if inner >= 0 { reactor.close(inner) { if let innerBuffer { pool.release(innerBuffer) } } }
        SSL_free(ssl)
        onClosed?(self)
        onClosed = nil
        onEstablished = nil
    }
}
