import XCTest
@testable import SPDY

/// A frame as the reader reported it, with its payload copied, so runs over different splits compare.
enum ReadFrame: Equatable {
    case control(ControlType, flags: UInt8, payload: [UInt8])
    case data(DataFrameHeader, payload: [UInt8])
}

/// Reads `bytes` handed over in the pieces `cuts` makes (cut positions, ascending).
func readFrames(_ bytes: [UInt8], cuts: [Int], maxControlLength: Int = SPDYLimits.defaultMaxControlFrameLength) throws -> [ReadFrame] {
    let reader = FrameReader(maxControlLength: maxControlLength)
    var frames: [ReadFrame] = []
    var payload: [UInt8] = []
    var bounds = [0] + cuts + [bytes.count]
    bounds = bounds.enumerated().filter { $0.offset == 0 || $0.element >= bounds[$0.offset - 1] }.map(\.element)
    for (start, end) in zip(bounds, bounds.dropFirst()) {
        try bytes[start..<end].withUnsafeBytes { piece in
            var index = 0
            while let event = try reader.next(piece, from: &index) {
                switch event {
                case .control(let type, let flags, let bytes): frames.append(.control(type, flags: flags, payload: Array(bytes)))
                case .dataHead: payload = []
                case .data(_, let bytes): payload += bytes
                case .dataEnd(let header): frames.append(.data(header, payload: payload))
                }
            }
        }
    }
    return frames
}

/// The client side of a connection, as kubectl's spdystream would write it.
final class TestClient {
    let compressor = try! HeaderCompressor()
    let decompressor = try! HeaderDecompressor()

    func synStream(_ stream: UInt32, _ headers: HeaderBlock, fin: Bool = false) -> [UInt8] {
        var block: [UInt8] = []
        try! compressor.compress(headers, appendingTo: &block)
        var output: [UInt8] = []
        FrameEncoder.synStream(stream: stream, flags: fin ? FrameFlags.fin : 0, compressedBlock: block, to: &output)
        return output
    }

    func headers(_ stream: UInt32, _ headers: HeaderBlock, fin: Bool = false) -> [UInt8] {
        var block: [UInt8] = []
        try! compressor.compress(headers, appendingTo: &block)
        var output: [UInt8] = []
        FrameEncoder.headers(stream: stream, fin: fin, compressedBlock: block, to: &output)
        return output
    }

    func data(_ stream: UInt32, _ text: String, fin: Bool = false) -> [UInt8] {
        var output: [UInt8] = []
        FrameEncoder.data(stream: stream, fin: fin, payload: Array(text.utf8), to: &output)
        return output
    }

    /// The server's frames, header blocks inflated.
    func read(_ bytes: [UInt8]) throws -> [ServerFrame] {
        try readFrames(bytes, cuts: []).map { frame in
            switch frame {
            case .data(let header, let payload): return .data(header.stream, String(decoding: payload, as: UTF8.self), fin: header.fin)
            case .control(.synReply, let flags, let payload):
                let stream = payload.withUnsafeBytes { $0.bigEndianUInt32(at: 0) }
                let headers = try payload.dropFirst(4).withUnsafeBytes { try decompressor.decompress($0) }
                return .synReply(stream, headers, fin: flags & FrameFlags.fin != 0)
            case .control(.rstStream, _, let payload):
                return payload.withUnsafeBytes { .rst($0.bigEndianUInt32(at: 0), ResetStatus(rawValue: $0.bigEndianUInt32(at: 4))) }
            case .control(.ping, _, let payload):
                return payload.withUnsafeBytes { .ping($0.bigEndianUInt32(at: 0)) }
            case .control(.goAway, _, let payload):
                return payload.withUnsafeBytes { .goAway($0.bigEndianUInt32(at: 0), GoAwayStatus(rawValue: $0.bigEndianUInt32(at: 4))) }
            case .control(let type, _, _):
                return .other(type)
            }
        }
    }
}

enum ServerFrame: Equatable {
    case synReply(UInt32, HeaderBlock, fin: Bool)
    case data(UInt32, String, fin: Bool)
    case rst(UInt32, ResetStatus)
    case ping(UInt32)
    case goAway(UInt32, GoAwayStatus)
    case other(ControlType)
}

/// Events copied out of the delegate calls (data pointers are valid only during the call).
enum RecordedEvent: Equatable {
    case synStream(UInt32, HeaderBlock, fin: Bool)
    case headers(UInt32, HeaderBlock, fin: Bool)
    case data(UInt32, String)
    case synReply(UInt32, HeaderBlock, fin: Bool)
    case peerEnded(UInt32)
    case reset(UInt32, ResetStatus, byPeer: Bool)
    case ping(UInt32, isReply: Bool)
    case goAway(UInt32, GoAwayStatus)
    case settings([SettingsEntry])
    case windowUpdate(UInt32, UInt32)
}

final class Recorder: SPDYSessionDelegate {
    var events: [RecordedEvent] = []
    /// Called on each event: a test's server logic (answer SYN_STREAMs...).
    var react: ((SPDYSession, SPDYEvent) -> Void)?

    func session(_ session: SPDYSession, _ event: SPDYEvent) {
        switch event {
        case .synStream(let stream, _, _, let headers, let fin): events.append(.synStream(stream, headers, fin: fin))
        case .headers(let stream, let headers, let fin): events.append(.headers(stream, headers, fin: fin))
        case .synReply(let stream, let headers, let fin): events.append(.synReply(stream, headers, fin: fin))
        case .data(let stream, let bytes):
            // Pieces of one frame (or consecutive frames) on the same stream are joined.
            let text = String(decoding: bytes, as: UTF8.self)
            if case .data(stream, let before) = events.last {
                events[events.count - 1] = .data(stream, before + text)
            } else {
                events.append(.data(stream, text))
            }
        case .peerEnded(let stream): events.append(.peerEnded(stream))
        case .reset(let stream, let status, let byPeer): events.append(.reset(stream, status, byPeer: byPeer))
        case .ping(let id, let isReply): events.append(.ping(id, isReply: isReply))
        case .goAway(let last, let status): events.append(.goAway(last, status))
        case .settings(let entries): events.append(.settings(entries))
        case .windowUpdate(let stream, let delta): events.append(.windowUpdate(stream, delta))
        }
        react?(session, event)
    }
}

extension SPDYSession {
    func receive(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try receive($0) }
    }
}
