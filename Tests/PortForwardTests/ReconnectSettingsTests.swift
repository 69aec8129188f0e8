import Testing
@testable import PortForward

@Suite("The client's re-dial backoff")
struct ReconnectSettingsTests {
    @Test("About 100 ms first, doubling, never past the maximum; jitter only shortens a wait, by at most half")
    func backoff() {
        let settings = ReconnectSettings()
        #expect(settings.backoff(failures: 0, random: 0) == 0.1)
        #expect(settings.backoff(failures: 1, random: 0) == 0.2)
        #expect(settings.backoff(failures: 3, random: 0) == 0.8)
        for failures in [4, 5, 10, 64, 1000] {
            #expect(settings.backoff(failures: failures, random: 0) == settings.maximumBackoffSeconds, "\(failures)")
        }
        // A relay back after an outage is dialled again within 2 s: the bound.
        #expect(settings.maximumBackoffSeconds < 2)
        #expect(abs(settings.backoff(failures: 0, random: 0.999) - 0.05) < 0.001)
        #expect(settings.backoff(failures: 10, random: 0.5) == settings.maximumBackoffSeconds * 0.75)
    }
}
