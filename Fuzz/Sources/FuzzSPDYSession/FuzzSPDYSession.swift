import FuzzSupport
import SPDY
#if canImport(Glibc)
import Glibc
#endif

// `SPDYSession` fed a peer's bytes in pieces the input chooses, with a delegate that answers as a
// port-forward server does (SYN_REPLY, RST_STREAM, DATA through `sendData` and `dataHeader`):
// - no trap; `receive` throws only `SPDYError`, and once it has thrown every later call throws
//   the same error and nothing more is reported;
// - every event keeps the stream rules (ids grow, nothing on a stream after its reset or its
//   peer's FIN, `data` points into the piece given to `receive`), and the session's open streams
//   are the ones the events leave open, never more than the limit;
// - nothing reported is larger than the limits allow (header blocks, SETTINGS), and the output
//   stays proportional to the input;
// - the output is a well-formed SPDY/3 stream a client can read (header blocks inflate on one
//   zlib context, no DATA after our FIN or before our SYN_REPLY);
// - the whole input at once and in pieces give the same events (DATA joined), output and error.
//
// Input: [settings][count][count piece sizes][peer's bytes]. settings bit 0: small limits;
// bit 1: the delegate sends its answers through `dataHeader` and its own payload.

enum Seen: Equatable {
    case synStream(UInt32, associated: UInt32, priority: UInt8, HeaderBlock, fin: Bool)
    case headers(UInt32, HeaderBlock, fin: Bool)
    case data(UInt32, [UInt8])
    case peerEnded(UInt32)
    case reset(UInt32, UInt32, byPeer: Bool)
    case ping(UInt32, isReply: Bool)
    case goAway(UInt32, UInt32)
    case settings([SettingsEntry])
    case windowUpdate(UInt32, UInt32)
    case failed(SPDYError)
}

struct ModelStream {
    var localEnded: Bool
    var remoteEnded: Bool
}

final class Server: SPDYSessionDelegate {
    let limits: SPDYLimits
    let useDataHeader: Bool
    var session: SPDYSession!
    var seen: [Seen] = []
    /// What went out: the session's output and, after it, the DATA frames written from here.
    var wire: [UInt8] = []
    var streams: [UInt32: ModelStream] = [:]
    var received: [UInt32: Int] = [:]
    var lastStream: UInt32 = 0
    var failed = false
    /// The piece being received: where `data` must point.
    var piece = UnsafeRawBufferPointer(start: nil, count: 0)

    init(limits: SPDYLimits, useDataHeader: Bool) {
        self.limits = limits
        self.useDataHeader = useDataHeader
    }

    func record(_ event: Seen) {
        if case .data(let stream, let bytes) = event, case .data(stream, let before)? = seen.last {
            seen[seen.count - 1] = .data(stream, before + bytes)
        } else {
            seen.append(event)
        }
    }

    func checkBlock(_ headers: HeaderBlock) {
        // Decoding replaces invalid UTF-8 with U+FFFD (3 bytes): at most 3 times the inflated size.
        let size = headers.fields.reduce(0) { $0 + 8 + $1.name.utf8.count + $1.value.utf8.count }
        require(headers.fields.count <= limits.maxHeaderBlockSize / 8 && size <= 3 * limits.maxHeaderBlockSize + 4,
                "a header block of \(headers.fields.count) fields, \(size) bytes, past the limit \(limits.maxHeaderBlockSize)")
        require(headers.fields.allSatisfy { !$0.name.isEmpty }, "an empty header name was reported")
    }

    /// Writes the session's pending output to the wire, as an owner must before a DATA frame of its own.
    func flush() { wire += session.takeOutput() }

    func send(_ stream: UInt32, _ text: String, fin: Bool) {
        let writable = session.isWritable(stream)
        let payload = Array(text.utf8)
        do {
            if useDataHeader {
                let header = try session.dataHeader(stream: stream, count: payload.count, fin: fin)
                require(header.stream == stream && header.length == payload.count && header.fin == fin, "dataHeader gave \(header)")
                flush()
                wire += header.bytes + payload
            } else {
                try session.sendData(stream: stream, payload, fin: fin)
            }
            require(writable, "DATA accepted on stream \(stream), which is not writable")
            if fin { localEnded(stream) }
        } catch let error as SPDYError {
            require(!writable && error == .streamNotWritable(stream), "sending on stream \(stream) (writable: \(writable)) threw \(error)")
        } catch {
            require(false, "sending threw \(error), not a SPDYError")
        }
    }

    func localEnded(_ stream: UInt32) {
        streams[stream]?.localEnded = true
        closeIfDone(stream)
    }

    func closeIfDone(_ stream: UInt32) {
        if let state = streams[stream], state.localEnded, state.remoteEnded { streams[stream] = nil }
    }

    func requireOpen(_ stream: UInt32, _ what: String) {
        require(!failed, "\(what) on stream \(stream) after the session failed")
        require(streams[stream] != nil, "\(what) on stream \(stream), which is not open")
        require(streams[stream]!.remoteEnded == false, "\(what) on stream \(stream) after the peer's FIN")
    }

    func session(_ session: SPDYSession, _ event: SPDYEvent) {
        require(!failed, "an event after the session failed: \(event)")
        switch event {
        case .synStream(let stream, let associated, let priority, let headers, let fin):
            record(.synStream(stream, associated: associated, priority: priority, headers, fin: fin))
            checkBlock(headers)
            require(stream & 1 == 1 && stream > lastStream, "SYN_STREAM \(stream) after \(lastStream)")
            require(streams[stream] == nil && session.isOpen(stream), "SYN_STREAM \(stream): open in the model \(streams[stream] != nil), in the session \(session.isOpen(stream))")
            require(priority < 8 && associated <= 0x7fff_ffff, "SYN_STREAM priority \(priority) associated \(associated)")
            lastStream = stream
            let writable = session.isWritable(stream)
            streams[stream] = ModelStream(localEnded: !writable, remoteEnded: fin)
            require(session.openStreams <= limits.maxConcurrentStreams, "\(session.openStreams) streams open, the limit is \(limits.maxConcurrentStreams)")
            // Answers by the stream's id, so that any split gets the same ones.
            switch stream >> 1 & 3 {
            case 1:
                session.reset(stream: stream, status: .refusedStream)
                require(!session.isOpen(stream), "stream \(stream) still open after reset")
                streams[stream] = nil
            default:
                let finishing = stream >> 1 & 3 == 3
                do {
                    try session.synReply(stream: stream, fin: finishing)
                    require(writable, "SYN_REPLY accepted on stream \(stream), which is not writable")
                    if finishing { localEnded(stream) }
                } catch let error as SPDYError {
                    require(!writable && error == .streamNotWritable(stream), "SYN_REPLY on \(stream) (writable: \(writable)) threw \(error)")
                } catch {
                    require(false, "synReply threw \(error), not a SPDYError")
                }
                // A second SYN_REPLY is refused.
                do {
                    try session.synReply(stream: stream)
                    require(false, "a second SYN_REPLY on stream \(stream) was accepted")
                } catch {}
                if stream >> 1 & 3 == 2 { send(stream, "ok", fin: false) }
            }
            closeIfDone(stream)
        case .synReply(let stream, _, _):
            require(false, "SYN_REPLY reported to a server for stream \(stream)")
        case .headers(let stream, let headers, let fin):
            record(.headers(stream, headers, fin: fin))
            checkBlock(headers)
            requireOpen(stream, "HEADERS")
            // With fin, `peerEnded` follows.
        case .data(let stream, let bytes):
            record(.data(stream, Array(bytes)))
            requireOpen(stream, "DATA")
            let inside = bytes.count > 0 && bytes.count <= maxFrameLength && piece.baseAddress != nil
                && bytes.baseAddress! >= piece.baseAddress! && bytes.baseAddress! + bytes.count <= piece.baseAddress! + piece.count
            require(inside, "DATA of \(bytes.count) bytes at \(String(describing: bytes.baseAddress)) outside the piece \(String(describing: piece.baseAddress)) + \(piece.count)")
            received[stream, default: 0] += bytes.count
        case .peerEnded(let stream):
            record(.peerEnded(stream))
            requireOpen(stream, "FIN")
            streams[stream]!.remoteEnded = true
            if session.isWritable(stream) || stream & 2 != 0 {
                send(stream, "received \(received[stream, default: 0])", fin: true)
            }
            closeIfDone(stream)
        case .reset(let stream, let status, let byPeer):
            record(.reset(stream, status.rawValue, byPeer: byPeer))
            require(streams[stream] != nil, "reset of stream \(stream), which is not open")
            require(!session.isOpen(stream), "stream \(stream) still open in its reset event")
            streams[stream] = nil
        case .ping(let id, let isReply):
            record(.ping(id, isReply: isReply))
            require(isReply == (id & 1 == 0), "PING \(id) isReply \(isReply)")
        case .goAway(let last, let status):
            record(.goAway(last, status.rawValue))
        case .settings(let entries):
            record(.settings(entries))
            require(4 + 8 * entries.count <= limits.maxControlFrameLength, "\(entries.count) SETTINGS past the frame limit")
        case .windowUpdate(let stream, let delta):
            record(.windowUpdate(stream, delta))
            require(delta <= 0x7fff_ffff && stream <= 0x7fff_ffff, "WINDOW_UPDATE \(stream) \(delta)")
        }
    }
}

func run(_ bytes: UnsafeRawBufferPointer, pieces: [Range<Int>], limits: SPDYLimits, useDataHeader: Bool) -> Server {
    let server = Server(limits: limits, useDataHeader: useDataHeader)
    let session: SPDYSession
    do { session = try SPDYSession(limits: limits, delegate: server) } catch { fatalError("no session: \(error)") }
    server.session = session
    var failure: SPDYError?
    for range in pieces {
        // Each piece in a buffer of its own, as a connection's reads are, so that a pointer past it shows.
        let copy = Array(bytes[range])
        copy.withUnsafeBytes { piece in
            server.piece = piece
            let before = server.seen.count
            do {
                try session.receive(piece)
                require(failure == nil, "receive returned after the session failed with \(failure!)")
            } catch let error as SPDYError {
                if let failure {
                    require(error == failure, "failed with \(failure), then threw \(error)")
                    require(server.seen.count == before, "events after the session failed")
                } else {
                    failure = error
                    require(session.failure == error, "threw \(error), the session says \(String(describing: session.failure))")
                    server.record(.failed(error))
                    server.failed = true
                }
            } catch {
                require(false, "receive threw \(error), not a SPDYError")
            }
        }
        require(session.openStreams <= limits.maxConcurrentStreams, "\(session.openStreams) streams open")
        if failure == nil {
            require(session.openStreams == server.streams.count,
                    "the session has \(session.openStreams) streams open, its events leave \(server.streams.count): \(server.streams.keys.sorted())")
        }
        server.flush()
    }
    if failure != nil {
        // Still failed, whatever comes.
        do {
            try session.receive(UnsafeRawBufferPointer(start: nil, count: 0))
            require(false, "an empty receive after the failure returned")
        } catch {}
    }
    return server
}

func word(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 << 8 | UInt32(bytes[offset + $1]) }
}

/// Reads the server's output as a client would: it must be well-formed SPDY/3.
func checkWire(_ wire: [UInt8], opened: UInt32) {
    let reader = SPDY.FrameReader(maxControlLength: maxFrameLength)
    let decompressor: HeaderDecompressor
    do { decompressor = try HeaderDecompressor(limit: 1 << 20) } catch { fatalError("\(error)") }
    var replied: Set<UInt32> = []
    var ended: Set<UInt32> = []
    var sawGoAway = false
    wire.withUnsafeBytes { bytes in
        var index = 0
        do {
            while let event = try reader.next(bytes, from: &index) {
                switch event {
                case .control(let type, let flags, let payload):
                    if getenv("FUZZ_DEBUG") != nil { print("out: \(type) \(flags) \(Array(payload.prefix(8)))") }
                    switch type {
                    case .synReply:
                        require(payload.count >= 4, "a SYN_REPLY of \(payload.count) bytes")
                        let stream = word(payload, 0)
                        let headers = try decompressor.decompress(UnsafeRawBufferPointer(rebasing: payload[4...]))
                        require(headers == HeaderBlock(), "SYN_REPLY headers \(headers)")
                        require(stream & 1 == 1 && stream <= opened && !replied.contains(stream), "SYN_REPLY on \(stream)")
                        replied.insert(stream)
                        if flags & FrameFlags.fin != 0 { ended.insert(stream) }
                    case .rstStream:
                        require(payload.count == 8, "an RST_STREAM of \(payload.count) bytes")
                        ended.insert(word(payload, 0))
                    case .ping:
                        require(payload.count == 4 && word(payload, 0) & 1 == 1, "a PING out that is no echo")
                    case .goAway:
                        require(payload.count == 8 && !sawGoAway, "a second GOAWAY, or one of \(payload.count) bytes")
                        sawGoAway = true
                    default:
                        require(false, "the server sent control frame \(type)")
                    }
                case .dataHead(let header):
                    if getenv("FUZZ_DEBUG") != nil { print("out: DATA \(header)") }
                    require(replied.contains(header.stream) && !ended.contains(header.stream),
                            "DATA on stream \(header.stream), replied \(replied.contains(header.stream)), ended \(ended.contains(header.stream))")
                    if header.fin { ended.insert(header.stream) }
                case .data, .dataEnd:
                    break
                }
            }
        } catch {
            require(false, "the server's output does not read: \(error)")
        }
        require(reader.headMissing == 8 && reader.dataRemaining == 0, "the server's output ends inside a frame")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let settings = input.byte()
    let sizes = input.take(Int(input.byte() & 0x1f))
    let stream = input.rest()
    var limits = SPDYLimits()
    if settings & 1 != 0 {
        limits.maxControlFrameLength = 300
        limits.maxHeaderBlockSize = 200
        limits.maxConcurrentStreams = 3
    }
    let useDataHeader = settings & 2 != 0

    let whole = run(stream, pieces: pieces(of: stream.count, sizes: UnsafeRawBufferPointer(start: nil, count: 0)),
                    limits: limits, useDataHeader: useDataHeader)
    if getenv("FUZZ_DEBUG") != nil { print(whole.seen.map { "\($0)" }.joined(separator: "\n")) }
    require(whole.wire.count <= 4 * stream.count + 256, "\(stream.count) bytes in, \(whole.wire.count) out")
    checkWire(whole.wire, opened: whole.lastStream)
    if !sizes.isEmpty {
        let split = run(stream, pieces: pieces(of: stream.count, sizes: sizes), limits: limits, useDataHeader: useDataHeader)
        require(split.seen == whole.seen, "in pieces \(Array(sizes)): \(split.seen)\nat once: \(whole.seen)")
        require(split.wire == whole.wire, "in pieces \(Array(sizes)) the output differs from the output at once")
    }
    return 0
}

// MARK: Seeds

/// A kubectl port-forward exchange as spdystream writes it: an error stream and a data stream for
/// port 80 (with requestid), a PING, a DATA payload, both FINs; then other frames a peer may send.
func seeds() -> [(name: String, bytes: [UInt8])] {
    let compressor = try! HeaderCompressor()
    func syn(_ stream: UInt32, _ headers: HeaderBlock, flags: UInt8 = 0) -> [UInt8] {
        var block: [UInt8] = []
        try! compressor.compress(headers, appendingTo: &block)
        var out: [UInt8] = []
        FrameEncoder.synStream(stream: stream, flags: flags, compressedBlock: block, to: &out)
        return out
    }
    var kubectl: [UInt8] = []
    kubectl += syn(1, ["streamtype": "error", "port": "80", "requestid": "0"])
    kubectl += syn(3, ["streamtype": "data", "port": "80", "requestid": "0"])
    FrameEncoder.ping(id: 1, to: &kubectl)
    FrameEncoder.data(stream: 3, fin: false, payload: Array("GET / HTTP/1.1\r\nHost: pod\r\n\r\n".utf8), to: &kubectl)
    FrameEncoder.data(stream: 3, fin: true, payload: EmptyCollection(), to: &kubectl)
    FrameEncoder.data(stream: 1, fin: true, payload: EmptyCollection(), to: &kubectl)

    var others: [UInt8] = []
    others += syn(5, ["streamtype": "error", "port": "8080"], flags: FrameFlags.fin)
    others += syn(7, ["streamtype": "data", "port": "8080"], flags: FrameFlags.unidirectional)
    FrameEncoder.settings([SettingsEntry(id: 4, value: 100), SettingsEntry(flags: 1, id: 7, value: 65536)], to: &others)
    FrameEncoder.windowUpdate(stream: 7, delta: 1 << 20, to: &others)
    var headers: [UInt8] = []
    try! compressor.compress(["x-extra": "1"], appendingTo: &headers)
    FrameEncoder.headers(stream: 9, fin: false, compressedBlock: headers, to: &others)
    FrameEncoder.rstStream(stream: 7, status: .cancel, to: &others)
    FrameEncoder.data(stream: 11, fin: false, payload: [1, 2, 3], to: &others)
    FrameEncoder.goAway(lastGoodStream: 0, status: .ok, to: &others)
    others += [0x80, 0x03, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x03, 0xaa, 0xbb, 0xcc]  // an unknown type: skipped

    return [
        ("kubectl-exchange", [0, 0] + kubectl),
        ("kubectl-exchange-split", [2, 3, 0, 6, 40] + kubectl),
        ("kubectl-exchange-small-limits-dataheader", [3, 1, 9] + kubectl),
        ("other-frames", [0, 0] + kubectl + others),
        ("other-frames-bytewise", [1, 1, 0] + kubectl + others),
    ]
}

@main enum Main {
    static func main() {
        writeSeedsIfAsked(seeds)
        FuzzerDriver.run(testOneInput)
    }
}
