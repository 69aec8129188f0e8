import CLinuxShim
import CNGHTTP2
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The first bytes of a connection: the HTTP/2 preface, or an HTTP/1.1 request to upgrade.
final class Handshake: CompletionHandler {
    let fd: FileDescriptor
    let peer: String
    unowned let relay: Relay
    var bytes: [UInt8] = []
    var head: RequestHead?
    var scanned = 0
    var continued = false

    init(fd: FileDescriptor, peer: String, relay: Relay) {
        self.fd = fd
        self.peer = peer
        self.relay = relay
    }

    var timer: TimerID = 0
    var done = false

    func start() {
        if timer == 0 {
            timer = relay.reactor.timer(nanoseconds: UInt64(relay.limits.handshakeTimeout * 1e9), handler: self, tag: 1)
        }
        relay.reactor.receive(fd, handler: self, tag: 0)
    }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
            return
        }
        if completion.tag == 1 {
            return refuse(.handshakeTimeout(seconds: relay.limits.handshakeTimeout))
        }
        guard completion.result > 0 else {
            finish()
            relay.reactor.close(fd)
            return
        }
        let pool = relay.reactor.buffers
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: pool.pointer(completion.buffer), count: Int(completion.result)))
        pool.release(completion.buffer)
        decide()
    }

    private func decide() {
        let preface = HTTPText.clientPrefacePrefix
        if head == nil {
            let prefix = min(bytes.count, preface.count)
            if bytes[..<prefix].elementsEqual(preface[..<prefix]) {
                if bytes.count < preface.count { return start() }
                return become(upgrade: nil, initial: bytes[...])
            }
            let limits = HeadLimits(maxBytes: relay.limits.maxRequestHead)
            switch bytes.withUnsafeBytes({ RequestHead.parse($0, limits: limits, scannedBefore: scanned) }) {
            case .incomplete(let upTo):
                scanned = upTo
                return start()
            case .invalid(let status, let reason):
                return refuse(Refusal(invalidHead: status, reason: reason))
            case .complete(let request):
                head = request
            }
        }
        guard let request = head else { return }
        if request.header("transfer-encoding") != nil {
            return refuse(.lengthRequired)
        }
        let bodyLength = request.contentLength
        let maxBody = relay.limits.maxUpgradeBody(relay.settings)
        if bodyLength > maxBody { return refuse(.bodyTooLarge(limit: maxBody)) }
        if request.target != "*" {
            if case .refused(let refusal) = relay.resolve(request.target) {
                return refuse(refusal)
            }
        }
        guard request.asksForH2C, let settings = request.header("http2-settings").flatMap(Base64URL.decode) else {
            return refuse(.upgradeRequired)
        }
        if bytes.count < request.length + bodyLength {
            // curl holds back a large body until it is told to go on.
            if !continued, request.header("expect")?.lowercased() == "100-continue" {
                continued = true
                guard writeAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return refuse(.badRequest("write failed")) }
            }
            return start()
        }
        become(upgrade: (request, settings, Array(bytes[request.length..<(request.length + bodyLength)])),
               initial: bytes[(request.length + bodyLength)...])
    }

    private func finish() {
        done = true
        relay.reactor.cancelTimer(timer)
        relay.handshakeDone(self)
    }

    private func become(upgrade: (RequestHead, [UInt8], [UInt8])?, initial: ArraySlice<UInt8>) {
        let session: RelaySession
        do {
            session = try RelaySession(fd: fd, peer: peer, relay: relay)
        } catch {
            finish()
            relay.limitedLog("session: \(error)")
            relay.reactor.close(fd)
            return
        }
        if let (request, settings, body) = upgrade {
            // The settings are checked before the answer: a payload nghttp2 refuses is a 400,
            // and nothing is upgraded.
            do {
                try session.connection.session.upgrade(settingsPayload: settings, headRequest: request.method == "HEAD")
            } catch {
                return refuse(.invalidSettings("\(error)"))
            }
            guard writeAll(Array(HTTPText.switchingProtocols.utf8)) else {
                finish()
                relay.reactor.close(fd)
                return
            }
            finish()
            relay.adopt(session)
            var headers = HeaderList([(":method", request.method), (":path", request.target)])
            for port in request.fields.all("port") { headers.fields.append(("port", port)) }
            session.upgraded(headers: headers, body: body)
        } else {
            finish()
            relay.adopt(session)
        }
        initial.withUnsafeBytes { session.connection.start(initial: $0) }
    }

    private func refuse(_ refusal: Refusal) {
        finish()
        relay.limitedLog("request from \(peer) refused with \(refusal.status): \(refusal.text)")
        _ = writeAll(Array(HTTPText.response(status: refusal.status, reason: refusal.reasonPhrase, body: refusal.text).utf8))
        // Unread request bytes would turn the close into a reset that loses the answer.
        Sockets.shutdownWrite(fd)
        relay.reactor.close(fd)
    }

    /// A few hundred bytes on a fresh socket: the kernel takes them at once.
    private func writeAll(_ data: [UInt8]) -> Bool {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { return false }
                offset += written
            }
            return true
        }
    }
}
