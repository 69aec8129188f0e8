import Histogram
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What a scenario found: a table for people and figures for the JSON file.
public struct BenchResult {
    public var scenario: String
    /// One line saying what was run.
    public var title: String
    /// (label, value, unit) rows.
    public var rows: [(String, String, String)] = []
    /// Every figure, by name.
    public var figures: [(String, JSON)] = []
    /// Things that went wrong (streams refused, echoes that did not match, ...).
    public var problems: [String] = []

    public init(scenario: String, title: String) {
        self.scenario = scenario
        self.title = title
    }

    mutating func row(_ label: String, _ value: String, _ unit: String = "") {
        rows.append((label, value, unit))
    }

    mutating func figure(_ name: String, _ value: JSON) {
        figures.append((name, value))
    }

    mutating func figure(_ name: String, _ value: Double) { figures.append((name, .number(value))) }
    mutating func figure(_ name: String, _ value: Int) { figures.append((name, .integer(value))) }

    public var table: String {
        var lines = [title]
        let labelWidth = max(rows.map { $0.0.count }.max() ?? 0, 10) + 2
        let valueWidth = max(rows.map { $0.1.count }.max() ?? 0, 8)
        for (label, value, unit) in rows {
            lines.append("  " + label.padded(labelWidth) + value.padded(valueWidth, right: true) + (unit.isEmpty ? "" : " " + unit))
        }
        for problem in problems { lines.append("  problem: \(problem)") }
        return lines.joined(separator: "\n")
    }
}

/// Latencies in nanoseconds, as an HDR histogram (3 significant digits, up to 10 minutes).
struct Latencies {
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000_000,
                                      numberOfSignificantValueDigits: .three)

    @inline(__always)
    mutating func record(_ nanoseconds: UInt64) {
        _ = histogram.record(max(nanoseconds, 1))
    }

    var count: Int { Int(histogram.totalCount) }

    func percentile(_ value: Double) -> UInt64 { count == 0 ? 0 : histogram.valueAtPercentile(value) }

    /// Rows p50/p99/p99.9/max and figures `<name>_p50_us`...
    func report(_ name: String, label: String, into result: inout BenchResult) {
        let points: [(String, String, Double)] = [("p50", "p50", 50), ("p99", "p99", 99), ("p99.9", "p999", 99.9)]
        for (title, key, point) in points {
            let value = percentile(point)
            result.row("\(label) \(title)", formatLatency(nanoseconds: value))
            result.figure("\(name)_\(key)_us", Double(value) / 1e3)
        }
        let maximum = count == 0 ? 0 : histogram.max
        result.row("\(label) max", formatLatency(nanoseconds: maximum))
        result.figure("\(name)_max_us", Double(maximum) / 1e3)
        result.figure("\(name)_mean_us", count == 0 ? 0 : histogram.mean / 1e3)
        result.figure("\(name)_samples", count)
    }
}

/// The live line on stderr: rewritten in place on a terminal, one plain line per period
/// otherwise (so logs stay readable).
final class ProgressLine {
    let reactor: ReactorBackend
    let isTerminal: Bool
    let period: Double
    var text: () -> String
    private var timer: TimerID = 0
    private var running = false
    private let startedAt = now()
    private var shown = false
    let quiet: Bool

    init(reactor: ReactorBackend, quiet: Bool, text: @escaping () -> String) {
        self.reactor = reactor
        self.quiet = quiet
        self.text = text
        isTerminal = isatty(2) != 0
        period = isTerminal ? 0.25 : 1.0
    }

    func start() {
        guard !quiet, !running else { return }
        running = true
        schedule()
    }

    private func schedule() {
        timer = reactor.after(period) { [weak self] in
            guard let self, self.running else { return }
            self.show()
            self.schedule()
        }
    }

    func show() {
        let line = "[\((now() - startedAt).fixed(1)) s] " + text()
        if isTerminal {
            fputs("\r\u{1B}[K" + line, stderr)
            shown = true
        } else {
            fputs(line + "\n", stderr)
        }
    }

    func stop() {
        guard running else { return }
        running = false
        reactor.cancelTimer(timer)
        if isTerminal && shown {
            fputs("\r\u{1B}[K", stderr)
            shown = false
        }
    }
}

/// A rate in bits per second as Gbit/s.
func gigabits(_ bytes: UInt64, _ seconds: Double) -> Double {
    seconds > 0 ? Double(bytes) * 8 / seconds / 1e9 : 0
}
