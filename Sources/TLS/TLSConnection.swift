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
/// ciphertext between the socket and OpenSSL, and plaintext between `SSL_read`/`SSL_write` and
/// its end of the pair, every read and write the reactor's (no OpenSSL call touches a socket).
/// OpenSSL's ciphertext I/O is a span BIO (CSSL `pf_span_*`): it reads straight from the pooled
/// buffer the reactor received into and writes straight into the pooled buffer the reactor
/// will send, so no ciphertext is copied into or out of memory BIOs. The other end of the pair
/// is what the rest of the program reads and writes as if it were the TCP connection.
///
/// Memory is bounded per connection: per direction at most `buffersInFlight` pooled buffers
/// waiting to be written or being filled (plaintext to the pair, ciphertext to the socket), plus
/// the one being read (ciphertext received from the socket, plaintext received from the pair),
/// plus OpenSSL's record buffers. Nothing more is read from a side while the other side's
/// writes are at the bound. An idle connection holds no pooled buffer. Half-close maps both ways: end of file on the inner end
/// sends close_notify and then shuts the socket's write side; close_notify (or end of file) from
/// the peer shuts the inner end's write side. An error on either side closes both.
public final class TLSConnection: CompletionHandler {
    public enum Role: Sendable { case server, client }

    /// Buffers per direction that may wait to be written while the pump reads and decrypts or
    /// encrypts the next: 1 serialises read -> decrypt -> write; more overlaps them.
    public static let defaultBuffersInFlight = 2
    /// TLS 1.3 KeyUpdate messages a peer may send on one connection; past it the connection is
    /// reset with one line. Each costs a key derivation (20-50 us), and a client can pack
    /// thousands in one read: without a bound, one connection with no credentials stalls the
    /// relay for everyone. Clients update keys rarely (OpenSSL and Go only when asked, or
    /// after 2^24+ records), so a legitimate connection never comes near.
    public static let maxKeyUpdates: UInt = 64

    /// Whether OpenSSL frees its record buffers (about 34 KiB) whenever they are empty
    /// (`SSL_MODE_RELEASE_BUFFERS`): an idle connection then costs 15 KiB instead of 24, but
    /// the serial stream rate through a session measured about 6% lower (docs/PERFORMANCE.md).
    public static let releaseRecordBuffers = false

    /// `SO_SNDBUF` of both ends of the socketpair (0: the kernel's default, 208 KiB here): larger
    /// socket buffers per write to the pair, measured about 10% less CPU per GB.
    public static let pairSendBufferBytes = 1 << 20

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
    /// Buffers per direction waiting to be written, at most (`defaultBuffersInFlight`).
    public let buffersInFlight: Int
    /// Server role: the handshake is done; the fd is the other end of the pair, for the program.
    public var onEstablished: ((FileDescriptor, TLSPeer) -> Void)?
    /// Both sides are closed (after an error, a refusal, a failed handshake or an orderly end).
    public var onClosed: ((TLSConnection) -> Void)?
    /// One line per failed handshake or connection error.
    public var log: (String) -> Void = { _ in }

    private let ssl: OpaquePointer
    /// What the span BIO reads from and writes into (owned here; the BIO only points at it).
    private let span: UnsafeMutablePointer<pf_span_state>
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
    /// The received ciphertext buffer the span BIO reads from.
    private var inputBuffer: BufferID?
    /// The buffer the span BIO writes ciphertext into (not yet queued for the socket).
    private var outputBuffer: BufferID?
    /// Ciphertext queued for the socket; the first is being written when `outerWriting`.
    private var outerQueue: [InFlight] = []
    /// Plaintext queued for the inner end; the first is being written when `innerWriting`.
    private var innerQueue: [InFlight] = []
    private var outerWriting = false
    private var innerWriting = false
    /// Plaintext from the inner end that `SSL_write` has not taken yet (the output was full).
    private var plaintext: InFlight?
    private var outerReceiving = false
    private var innerReceiving = false
    /// The socket's receive side said end of file.
    private var outerEndOfFile = false
    /// No more plaintext from the peer (close_notify or end of file).
    private var outerReadEnded = false
    /// The inner write side is shut: the plaintext that came before the end is all written.
    private var innerWriteShut = false
    /// The inner end said end of file: close_notify is to be sent.
    private var innerReadEnded = false
    /// close_notify is in the output.
    private var closeNotifyQueued = false
    private var outerWriteShut = false

    private enum Tag: UInt32 { case outerReceive, outerWrite, innerReceive, innerWrite, timer }

    /// The BIO method of every pump (made once).
    nonisolated(unsafe) private static let spanMethod: OpaquePointer = {
        guard let method = pf_span_method_new() else { fatalError("OpenSSL: BIO_meth_new failed") }
        return method
    }()

    /// The server side, before its handshake: `start()` runs it.
    public init(serverSocket fd: FileDescriptor, peer: String, context: TLSContext, reactor: ReactorBackend,
                deadlineSeconds: Double, buffersInFlight: Int = TLSConnection.defaultBuffersInFlight) throws {
        precondition(context.isServer)
        let (ssl, _, _) = try context.makeSession()
        self.ssl = ssl
        self.reactor = reactor
        self.role = .server
        self.outer = fd
        self.peer = peer
        self.deadlineSeconds = deadlineSeconds
        self.buffersInFlight = max(1, buffersInFlight)
        phase = .handshake
        span = Self.attachSpan(ssl)
        reserveQueues()
        // The pump writes whole records, flushed when it has them: Nagle would only hold a
        // small one (a stream's HEADERS, a 4-byte echo) for the peer's delayed ACK, 40 ms.
        Sockets.noDelay(fd)
    }

    /// The client side, its handshake done (`TLSClientHandshake`): `openInner()` starts the pump.
    public init(established session: TLSClientHandshake.Established, reactor: ReactorBackend, peer: String,
                deadlineSeconds: Double, buffersInFlight: Int = TLSConnection.defaultBuffersInFlight) {
        ssl = session.ssl
        session.handedOver = true
        self.reactor = reactor
        self.role = .client
        self.outer = session.fd
        self.peer = peer
        self.deadlineSeconds = deadlineSeconds
        self.buffersInFlight = max(1, buffersInFlight)
        phase = .open
        sniffed = true
        // Ciphertext the handshake read past its end (the first records, if the relay sent
        // them at once) moves from the handshake's memory BIO into a pooled buffer first. The
        // handshake reads 16 KiB at a time and only while OpenSSL wants more, so less than one
        // pooled buffer is ever left.
        let handshakeInput = session.input
        let leftover = min(pf_bio_pending(handshakeInput), reactor.buffers.bufferSize)
        var carried: (BufferID, Int)?
        if leftover > 0 {
            let buffer = reactor.buffers.take()
            let count = BIO_read(handshakeInput, reactor.buffers.pointer(buffer), Int32(leftover))
            if count > 0 { carried = (buffer, Int(count)) } else { reactor.buffers.release(buffer) }
        }
        span = Self.attachSpan(ssl)
        if let (buffer, count) = carried {
            inputBuffer = buffer
            span.pointee.input = UnsafePointer(reactor.buffers.pointer(buffer).assumingMemoryBound(to: UInt8.self))
            span.pointee.inputCount = count
        }
        reserveQueues()
        Sockets.noDelay(session.fd)
    }

    /// A span BIO for both directions of `ssl` (the memory BIOs it replaces are freed).
    private static func attachSpan(_ ssl: OpaquePointer) -> UnsafeMutablePointer<pf_span_state> {
        let span = UnsafeMutablePointer<pf_span_state>.allocate(capacity: 1)
        span.initialize(to: pf_span_state(input: nil, inputCount: 0, output: nil, outputCount: 0, outputCapacity: 0,
                                          keyUpdates: 0, keyUpdateLimit: maxKeyUpdates))
        pf_ssl_count_key_updates(ssl, span)
        guard let bio = pf_span_bio(spanMethod, span) else { fatalError("OpenSSL: BIO_new failed") }
        SSL_set_bio(ssl, bio, bio)
        pf_ssl_pump_modes(ssl, releaseRecordBuffers ? 1 : 0)
        return span
    }

    private func reserveQueues() {
        outerQueue.reserveCapacity(buffersInFlight)
        innerQueue.reserveCapacity(buffersInFlight)
    }

    deinit { span.deallocate() }

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
        if Self.pairSendBufferBytes > 0 {
            var bytes = Int32(Self.pairSendBufferBytes)
            for end in pair { _ = setsockopt(end, SOL_SOCKET, SO_SNDBUF, &bytes, socklen_t(MemoryLayout<Int32>.size)) }
        }
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
            // Received only once the previous buffer is read to its end.
            if let old = inputBuffer { reactor.buffers.release(old) }
            inputBuffer = completion.buffer
            span.pointee.input = UnsafePointer(pointer.assumingMemoryBound(to: UInt8.self))
            span.pointee.inputCount = result
            advance()
        case .outerWrite:
            guard outerWriting, !outerQueue.isEmpty else { return }
            if result <= 0 { return abort("write: \(SystemError.reason(Int32(-result)))") }
            if wrote(result, &outerQueue, &outerWriting) { advance() } else { issueOuterWrite() }
        case .innerReceive:
            innerReceiving = false
            if result < 0 { return abort("inner read: \(SystemError.reason(Int32(-result)))") }
            if result == 0 {
                innerReadEnded = true
                return advance()
            }
            plaintext = InFlight(buffer: completion.buffer, offset: 0, count: result)
            advance()
        case .innerWrite:
            guard innerWriting, !innerQueue.isEmpty else { return }
            if result <= 0 { return abort("inner write: \(SystemError.reason(Int32(-result)))") }
            if wrote(result, &innerQueue, &innerWriting) { advance() } else { issueInnerWrite() }
        }
    }

    // MARK: the pump

    /// Does everything that can be done now, then waits for what it needs next.
    private func advance() {
        provideOutput()
        if phase == .handshake {
            ERR_clear_error()
            let result = SSL_do_handshake(ssl)
            if result != 1 {
                let error = SSL_get_error(ssl, result)
                if error == SSL_ERROR_WANT_READ {
                    flushOuter()
                    releaseReadInput()
                    if outerEndOfFile { return fail("closed by the client during the handshake") }
                    if !outerReceiving { receiveOuter() }
                    return
                }
                if error == SSL_ERROR_WANT_WRITE { return flushOuter() }
                return fail(handshakeFailure())
            }
            established()
            if phase != .open { return }
        }
        guard phase == .open else { return }
        decrypt()
        guard phase == .open else { return }
        if !innerWriting && !innerQueue.isEmpty { issueInnerWrite() }
        if outerReadEnded && innerQueue.isEmpty && !innerWriteShut {
            // Only after the last plaintext is written: on io_uring a queued write reaches the
            // kernel at the end of the turn, after a shutdown made now, and the inner end would
            // read its end of file first (the peer's last answer lost, the write failing EPIPE).
            innerWriteShut = true
            Sockets.shutdownWrite(inner)
        }
        encrypt()
        guard phase == .open else { return }
        flushOuter()
        let drained = outerQueue.isEmpty && span.pointee.outputCount == 0 && plaintext == nil
        if !innerReadEnded && !innerReceiving && plaintext == nil && outerQueue.count < buffersInFlight {
            innerReceiving = true
            reactor.receive(inner, handler: self, tag: Tag.innerReceive.rawValue)
        }
        if innerReadEnded && closeNotifyQueued && drained && !outerWriteShut {
            outerWriteShut = true
            Sockets.shutdownWrite(outer)
        }
        if outerReadEnded && outerWriteShut && innerQueue.isEmpty {
            return finish()
        }
        if outerWriteShut && !timerArmed {
            // Both close_notify and FIN are sent: the peer has this long to close its side.
            timer = reactor.timer(nanoseconds: UInt64(deadlineSeconds * 1e9), handler: self, tag: Tag.timer.rawValue)
            timerArmed = true
        }
    }

    /// Plaintext towards the inner end: buffers filled with `SSL_read` while fewer than
    /// `buffersInFlight` wait to be written.
    private func decrypt() {
        while innerQueue.count < buffersInFlight && !outerReadEnded {
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
            let error = count <= 0 ? SSL_get_error(ssl, count) : SSL_ERROR_NONE
            if span.pointee.keyUpdates > Self.maxKeyUpdates {
                reactor.buffers.release(buffer)
                return abort("TLS: more than \(Self.maxKeyUpdates) KeyUpdate messages on one connection (TLSConnection.maxKeyUpdates)")
            }
            if filled > 0 {
                innerQueue.append(InFlight(buffer: buffer, offset: 0, count: filled))
                if !innerWriting { issueInnerWrite() }
            } else {
                reactor.buffers.release(buffer)
            }
            if count > 0 { continue }
            switch error {
            case SSL_ERROR_WANT_READ:
                releaseReadInput()
                if outerEndOfFile {
                    endOuterRead()
                } else if !outerReceiving {
                    receiveOuter()
                }
                return
            case SSL_ERROR_WANT_WRITE:
                // A record OpenSSL must answer (a key update) waits for room in the output.
                flushOuter()
                return
            case SSL_ERROR_ZERO_RETURN:
                endOuterRead()
                return
            default:
                return abort("TLS: \(OpenSSLErrors.drain() ?? "error \(error)")")
            }
        }
    }

    /// Plaintext from the inner end through `SSL_write` into the output, a new output buffer
    /// whenever one is full and fewer than `buffersInFlight` are queued.
    private func encrypt() {
        while let pending = plaintext {
            ERR_clear_error()
            let written = SSL_write(ssl, reactor.buffers.pointer(pending.buffer) + pending.offset, Int32(pending.count - pending.offset))
            if written > 0 {
                reactor.buffers.release(pending.buffer)
                plaintext = nil
                break
            }
            let error = SSL_get_error(ssl, written)
            guard error == SSL_ERROR_WANT_WRITE else { return abort("SSL_write: \(OpenSSLErrors.drain() ?? "failed")") }
            // The output buffer is full: queue it, and go on in another while the bound allows.
            guard queueOutput() else { return }
        }
        if innerReadEnded && !closeNotifyQueued && plaintext == nil {
            ERR_clear_error()
            let result = SSL_shutdown(ssl)
            if result >= 0 {
                closeNotifyQueued = true
            } else if SSL_get_error(ssl, result) == SSL_ERROR_WANT_WRITE {
                _ = queueOutput()
            } else {
                closeNotifyQueued = true
            }
        }
    }

    /// An output buffer for the span BIO when there is none and the bound allows one.
    private func provideOutput() {
        guard outputBuffer == nil, outerQueue.count < buffersInFlight else { return }
        let buffer = reactor.buffers.take()
        outputBuffer = buffer
        span.pointee.output = reactor.buffers.pointer(buffer).assumingMemoryBound(to: UInt8.self)
        span.pointee.outputCount = 0
        span.pointee.outputCapacity = reactor.buffers.bufferSize
    }

    /// Moves the filled output buffer to the socket's queue and provides the next, or returns
    /// false when the queue is at its bound.
    private func queueOutput() -> Bool {
        guard let buffer = outputBuffer, span.pointee.outputCount > 0 else {
            provideOutput()
            return outputBuffer != nil && span.pointee.outputCount < span.pointee.outputCapacity
        }
        outerQueue.append(InFlight(buffer: buffer, offset: 0, count: span.pointee.outputCount))
        outputBuffer = nil
        span.pointee.output = nil
        span.pointee.outputCount = 0
        span.pointee.outputCapacity = 0
        if !outerWriting { issueOuterWrite() }
        provideOutput()
        return outputBuffer != nil
    }

    /// Starts the socket write of what is queued, or of what the output holds when nothing is;
    /// an output buffer left empty goes back to the pool (an idle connection holds none).
    private func flushOuter() {
        if !outerWriting {
            if outerQueue.isEmpty, outputBuffer != nil, span.pointee.outputCount > 0 {
                _ = queueOutput()
            } else if !outerQueue.isEmpty {
                issueOuterWrite()
            }
        }
        if let buffer = outputBuffer, span.pointee.outputCount == 0 {
            reactor.buffers.release(buffer)
            outputBuffer = nil
            span.pointee.output = nil
            span.pointee.outputCapacity = 0
        }
    }

    /// The received buffer, once the span BIO has read all of it, goes back to the pool.
    private func releaseReadInput() {
        guard span.pointee.inputCount == 0, let buffer = inputBuffer else { return }
        reactor.buffers.release(buffer)
        inputBuffer = nil
        span.pointee.input = nil
    }

    /// No more plaintext will come; the inner write side is shut once what came is written
    /// (`advance`).
    private func endOuterRead() {
        outerReadEnded = true
    }

    private func receiveOuter() {
        outerReceiving = true
        reactor.receive(outer, handler: self, tag: Tag.outerReceive.rawValue)
    }

    /// A write of `queue`'s first buffer moved `result` bytes: true when that buffer is all
    /// written (it goes back to the pool), false when the rest is still to be written.
    private func wrote(_ result: Int, _ queue: inout [InFlight], _ writing: inout Bool) -> Bool {
        queue[0].offset += result
        if queue[0].offset < queue[0].count { return false }
        writing = false
        reactor.buffers.release(queue.removeFirst().buffer)
        return true
    }

    private func issueOuterWrite() {
        guard let write = outerQueue.first else { return }
        outerWriting = true
        reactor.write(outer, from: reactor.buffers.pointer(write.buffer) + write.offset, count: write.count - write.offset,
                      handler: self, tag: Tag.outerWrite.rawValue)
    }

    private func issueInnerWrite() {
        guard let write = innerQueue.first else { return }
        innerWriting = true
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
                // Several CNs: the last, as Go's pkix.Name keeps it (each overwrites the one before).
                var commonName = ""
                var cnIndex: Int32 = 0
                while let name = entry(NID_commonName, cnIndex) {
                    commonName = name
                    cnIndex += 1
                }
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
        if let buffer = outputBuffer, span.pointee.outputCount > 0, !outerWriting {
            _ = Glibc.write(outer, reactor.buffers.pointer(buffer), span.pointee.outputCount)
        }
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
        // Buffers not handed to the reactor go back now; the queues' (whose first may be in a
        // write the close cancels) once each descriptor is closed.
        for buffer in [inputBuffer, outputBuffer, plaintext?.buffer] { if let buffer { pool.release(buffer) } }
        inputBuffer = nil
        outputBuffer = nil
        plaintext = nil
        let outerBuffers = outerQueue.map(\.buffer)
        let innerBuffers = innerQueue.map(\.buffer)
        outerQueue.removeAll()
        innerQueue.removeAll()
        reactor.close(outer) { for buffer in outerBuffers { pool.release(buffer) } }
        if inner >= 0 {
            reactor.close(inner) { for buffer in innerBuffers { pool.release(buffer) } }
        } else {
            for buffer in innerBuffers { pool.release(buffer) }
        }
        SSL_free(ssl)
        onClosed?(self)
        onClosed = nil
        onEstablished = nil
    }
}
