import TetherMetrics
import XCTest

final class PrometheusTextTests: XCTestCase {
    func testFamiliesAndSamplesInTheExpositionFormat() {
        var out = PrometheusText()
        out.family("tether_requests_total", help: "Requests by status.", type: .counter)
        out.sample("tether_requests_total", ["code": "200"], UInt64(7))
        out.sample("tether_requests_total", ["code": "503"], UInt64(1))
        out.family("tether_streams_active", help: "Streams in flight.", type: .gauge)
        out.sample("tether_streams_active", 3)
        out.family("process_cpu_seconds_total", help: "CPU time.", type: .counter)
        out.sample("process_cpu_seconds_total", 1.25)
        XCTAssertEqual(out.text, """
            # HELP tether_requests_total Requests by status.
            # TYPE tether_requests_total counter
            tether_requests_total{code="200"} 7
            tether_requests_total{code="503"} 1
            # HELP tether_streams_active Streams in flight.
            # TYPE tether_streams_active gauge
            tether_streams_active 3
            # HELP process_cpu_seconds_total CPU time.
            # TYPE process_cpu_seconds_total counter
            process_cpu_seconds_total 1.25

            """)
    }

    func testLabelValuesAndHelpAreEscaped() {
        var out = PrometheusText()
        out.family("m", help: "a \\ b\nc \"q\"", type: .gauge)
        out.sample("m", ["reason": "say \"hi\"\\\n"], 1)
        out.sample("m", dynamicLabels: [("a", "x\"y"), ("b", "z")], UInt64(2))
        XCTAssertEqual(out.text, """
            # HELP m a \\\\ b\\nc "q"
            # TYPE m gauge
            m{reason="say \\"hi\\"\\\\\\n"} 1
            m{a="x\\"y",b="z"} 2

            """)
    }

    func testFloatFormatting() {
        XCTAssertEqual(PrometheusText.format(0.005), "0.005")
        XCTAssertEqual(PrometheusText.format(300), "300")
        XCTAssertEqual(PrometheusText.format(-2), "-2")
        XCTAssertEqual(PrometheusText.format(.infinity), "+Inf")
        XCTAssertEqual(PrometheusText.format(-.infinity), "-Inf")
        XCTAssertEqual(PrometheusText.format(.nan), "NaN")
        XCTAssertEqual(Double(PrometheusText.format(1.0 / 3.0)), 1.0 / 3.0)
        XCTAssertEqual(Double(PrometheusText.format(1e-7)), 1e-7)
    }

    func testHistogramBucketsAreCumulativeAndInclusive() {
        let h = Histogram(upperBounds: [0.001, 0.01, 0.1])
        h.observe(nanoseconds: 500_000)  // 0.5 ms
        h.observe(nanoseconds: 1_000_000)  // exactly 1 ms: le is inclusive
        h.observe(nanoseconds: 5_000_000)
        h.observe(nanoseconds: 2_000_000_000)  // above every bound
        var out = PrometheusText()
        out.histogram("lat_seconds", help: "Latency.", h.snapshot())
        XCTAssertEqual(out.text, """
            # HELP lat_seconds Latency.
            # TYPE lat_seconds histogram
            lat_seconds_bucket{le="0.001"} 2
            lat_seconds_bucket{le="0.01"} 3
            lat_seconds_bucket{le="0.1"} 3
            lat_seconds_bucket{le="+Inf"} 4
            lat_seconds_sum 2.0065
            lat_seconds_count 4

            """)
    }

    func testSnapshotsOfSeveralWorkersSum() {
        let a = Histogram(upperBounds: [1])
        let b = Histogram(upperBounds: [1])
        a.observe(nanoseconds: 10)
        b.observe(nanoseconds: 20)
        b.observe(nanoseconds: 3_000_000_000)
        var total = HistogramSnapshot(upperBounds: [1])
        total.add(a)
        total.add(b)
        XCTAssertEqual(total.counts, [2])
        XCTAssertEqual(total.overflow, 1)
        XCTAssertEqual(total.count, 3)
        XCTAssertEqual(total.sum, 3.00000003, accuracy: 1e-12)
        // A histogram with other buckets cannot be merged into this one.
        total.add(Histogram(upperBounds: [2]))
        XCTAssertEqual(total.count, 3)
    }

    func testDefaultLatencyBucketsSpanMillisecondsToMinutes() {
        let h = Histogram()
        XCTAssertEqual(h.upperBounds.first, 0.0005)
        XCTAssertEqual(h.upperBounds.last, 300)
        XCTAssertEqual(h.upperBounds, h.upperBounds.sorted())
    }
}
