import FuzzSupport
import WebSocket

// The server's `FrameReader` and the SPDY tunnel's `ByteStream` fed a client's bytes, at once and
// in pieces the input chooses, each piece in a buffer of its own:
// - the same events whatever the split (payloads joined);
// - every `.payload` range lies inside the piece it was given with, ranges ascend, none is empty;
// - messages nest (start, payload, end; control frames anywhere), a message never carries more
//   than `maxMessageBytes`, a ping/pong no more than 125 bytes, and nothing follows a close or a
//   failure (`isClosed` says so);
// - `ByteStream` reports what the reader does without the message boundaries, and a text
//   message as a failure.
//
// Input: [settings][count][count piece sizes][client's bytes]. settings bit 0 set: maxMessageBytes
// is settings >> 1 (0-127), else the default.

enum Seen: Equatable {
    case start(MessageKind)
    case payload([UInt8])
    case end
    case ping([UInt8])
    case pong([UInt8])
    case close(UInt16?, String)
    case failed(FrameError)
}

func record(_ event: Seen, in seen: inout [Seen]) {
    if case .payload(let bytes) = event, case .payload(let before)? = seen.last {
        seen[seen.count - 1] = .payload(before + bytes)
    } else {
        seen.append(event)
    }
}

/// Runs the reader (or the byte stream) over the pieces, checking every event as it comes.
func run(_ bytes: UnsafeRawBufferPointer, pieces: [Range<Int>], byteStream: Bool, limits: WebSocketLimits) -> [Seen] {
    var reader = FrameReader(role: .server, limits: limits)
    var stream = ByteStream(limits: limits)
    var seen: [Seen] = []
    var inMessage = false
    var messageBytes = 0
    var ended = false
    var events: [FrameEvent] = []
    for range in pieces {
        var copy = Array(bytes[range])
        events.removeAll()
        copy.withUnsafeMutableBytes { piece in
            if byteStream { stream.receive(piece, into: &events) } else { reader.receive(piece, into: &events) }
        }
        var lastEnd = 0
        for event in events {
            require(!ended, "\(event) after the connection ended: \(seen)")
            switch event {
            case .messageStart(let kind):
                require(!byteStream, "the byte stream reported a message start")
                require(!inMessage, "a message starts inside another")
                inMessage = true
                messageBytes = 0
                record(.start(kind), in: &seen)
            case .payload(let payload):
                require(!payload.isEmpty && payload.lowerBound >= lastEnd && payload.upperBound <= copy.count,
                        "payload \(payload) in a piece of \(copy.count) bytes, after \(lastEnd)")
                require(byteStream || inMessage, "payload outside a message")
                lastEnd = payload.upperBound
                messageBytes += payload.count
                require(byteStream || messageBytes <= limits.maxMessageBytes,
                        "a message of \(messageBytes) bytes, the limit is \(limits.maxMessageBytes)")
                record(.payload(Array(copy[payload])), in: &seen)
            case .messageEnd:
                require(!byteStream, "the byte stream reported a message end")
                require(inMessage, "a message ends outside one")
                inMessage = false
                record(.end, in: &seen)
            case .ping(let payload):
                require(payload.count <= 125, "a ping of \(payload.count) bytes")
                record(.ping(payload), in: &seen)
            case .pong(let payload):
                require(payload.count <= 125, "a pong of \(payload.count) bytes")
                record(.pong(payload), in: &seen)
            case .close(let code, let reason):
                require(code.map(CloseCode.isValidOnWire) ?? reason.isEmpty, "close \(String(describing: code)) \(reason)")
                require(reason.utf8.count <= 123, "a close reason of \(reason.utf8.count) bytes")
                ended = true
                record(.close(code, reason), in: &seen)
            case .failed(let error):
                ended = true
                record(.failed(error), in: &seen)
            }
        }
        let closed = byteStream ? stream.isClosed : reader.isClosed
        require(closed == ended, "isClosed \(closed) after \(seen)")
    }
    return seen
}

/// What the byte stream must report, given what the reader reported.
func tunnel(_ frames: [Seen]) -> [Seen] {
    var seen: [Seen] = []
    for event in frames {
        switch event {
        case .start(.binary), .end:
            continue
        case .start(.text):
            seen.append(.failed(.unsupportedMessage("a text message in the SPDY tunnel")))
            return seen
        default:
            record(event, in: &seen)
        }
    }
    return seen
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let settings = input.byte()
    let sizes = input.take(Int(input.byte() & 0x1f))
    let bytes = input.rest()
    let limits = settings & 1 != 0 ? WebSocketLimits(maxMessageBytes: Int(settings >> 1)) : WebSocketLimits()
    let once = pieces(of: bytes.count, sizes: UnsafeRawBufferPointer(start: nil, count: 0))
    let split = pieces(of: bytes.count, sizes: sizes)

    let whole = run(bytes, pieces: once, byteStream: false, limits: limits)
    let inPieces = run(bytes, pieces: split, byteStream: false, limits: limits)
    require(inPieces == whole, "frames in pieces \(Array(sizes)):\n\(inPieces)\nat once:\n\(whole)")

    let expected = tunnel(whole)
    let streamWhole = run(bytes, pieces: once, byteStream: true, limits: limits)
    require(streamWhole == expected, "byte stream:\n\(streamWhole)\nthe reader says:\n\(expected)")
    let streamSplit = run(bytes, pieces: split, byteStream: true, limits: limits)
    require(streamSplit == expected, "byte stream in pieces \(Array(sizes)):\n\(streamSplit)\nthe reader says:\n\(expected)")
    return 0
}

// MARK: Seeds

/// A client's frame: masked with `key`.
func masked(_ opcode: Opcode, fin: Bool = true, key: UInt32 = 0x3712_a5c9, _ payload: [UInt8]) -> [UInt8] {
    var header = FrameHeader(fin: fin, opcode: opcode, mask: key, payloadLength: payload.count).encoded()
    var body = payload
    var mask = Mask(key: key)
    body.withUnsafeMutableBytes { mask.apply($0) }
    header += body
    return header
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    // kubectl's SPDY tunnel: a SYN_STREAM's first bytes in a binary message, the rest in another.
    let spdy: [UInt8] = [0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    let tunnel = masked(.binary, Array(spdy[..<5])) + masked(.binary, Array(spdy[5...]))
    let fragmented = masked(.binary, fin: false, Array("hello ".utf8)) + masked(.ping, Array("keepalive".utf8))
        + masked(.continuation, Array("world".utf8)) + masked(.pong, [])
        + masked(.close, [0x03, 0xe8] + Array("bye".utf8))
    let large = masked(.binary, [UInt8](repeating: 0x5a, count: 300)) + masked(.text, Array("text".utf8))
    return [
        ("binary-message", [0, 0] + masked(.binary, [0x00] + Array("GET / HTTP/1.1\r\n\r\n".utf8))),
        ("spdy-tunnel-split", [0, 3, 0, 2, 6] + tunnel),
        ("fragmented-ping-close", [0, 1, 0] + fragmented),
        ("large-then-text-limit-100", [201, 2, 10, 200] + large),
        ("unmasked-is-refused", [0, 0] + FrameWriter.frame(.binary, payload: [1, 2, 3])),
    ]
}

@main enum Main {
    static func main() {
        writeSeedsIfAsked(seeds)
        FuzzerDriver.run(testOneInput)
    }
}
