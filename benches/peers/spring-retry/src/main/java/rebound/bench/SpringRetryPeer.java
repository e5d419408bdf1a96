package rebound.bench;

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.event.ContextClosedEvent;
import org.springframework.context.event.EventListener;
import org.springframework.kafka.annotation.BackOff;
import org.springframework.kafka.annotation.DltHandler;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.annotation.RetryableTopic;
import org.springframework.kafka.config.KafkaListenerEndpointRegistry;
import org.springframework.kafka.listener.MessageListenerContainer;
import org.springframework.kafka.retrytopic.RetryTopicHeaders;
import org.springframework.stereotype.Component;

/**
 * The Spring Kafka peer of rebound's benchmark (benches/rebound/spring.rs, BENCHMARKS.md).
 *
 * <p>One {@code @KafkaListener} with {@code @RetryableTopic} on {@code bench.topic}; its back-off
 * tiers come from {@code bench.attempts}, {@code bench.delay} (ms) and {@code bench.multiplier}.
 * The handler behaves as the bench's rebound handler: a payload {@code ID|ok} succeeds,
 * {@code ID|tN} fails transiently on its first N attempts, {@code ID|p} fails permanently (straight
 * to the DLT).
 *
 * <p>It appends lines to {@code bench.out} (flushed every 5 ms):
 * <ul>
 * <li>{@code READY} once every container (main, retry topics, DLT) has partitions assigned;
 * <li>{@code A id attempt topic partition start_us due_us outcome} for every handler call when
 * {@code bench.record=all}: start is the wall clock at the call, due is the
 * {@code retry_topic-backoff-timestamp} header (epoch ms, -1 on the main topic), attempt is
 * 0-based (failed attempts before this one);
 * <li>{@code D id} for every record the DLT handler gets;
 * <li>{@code C calls} every 10 ms while the count of handler calls moves.
 * </ul>
 */
@SpringBootApplication
public class SpringRetryPeer {

	public static void main(String[] args) {
		SpringApplication.run(SpringRetryPeer.class, args);
	}

	/** A failure the retry topics retry. */
	public static class TransientFailure extends RuntimeException {
		public TransientFailure(String message) {
			super(message, null, false, false);
		}
	}

	/** A failure that goes straight to the DLT (excluded from retries). */
	public static class PermanentFailure extends RuntimeException {
		public PermanentFailure(String message) {
			super(message, null, false, false);
		}
	}

	/** The output file, written by one flusher thread. */
	@Component
	public static class Out {

		private final BufferedWriter writer;

		private final StringBuilder pending = new StringBuilder();

		final AtomicLong calls = new AtomicLong();

		private final ScheduledExecutorService flusher = Executors.newSingleThreadScheduledExecutor();

		public Out(@Value("${bench.out}") String path, KafkaListenerEndpointRegistry registry) throws IOException {
			this.writer = Files.newBufferedWriter(Path.of(path), StandardCharsets.UTF_8);
			long[] lastCount = {-1};
			boolean[] ready = {false};
			this.flusher.scheduleWithFixedDelay(() -> {
				if (!ready[0] && allAssigned(registry)) {
					ready[0] = true;
					line("READY");
				}
				long c = this.calls.get();
				if (c != lastCount[0]) {
					lastCount[0] = c;
					line("C " + c);
				}
				flush();
			}, 5, 5, TimeUnit.MILLISECONDS);
		}

		private static boolean allAssigned(KafkaListenerEndpointRegistry registry) {
			var containers = registry.getAllListenerContainers();
			if (containers.isEmpty()) {
				return false;
			}
			for (MessageListenerContainer c : containers) {
				var assigned = c.getAssignedPartitions();
				if (!c.isRunning() || assigned == null || assigned.isEmpty()) {
					return false;
				}
			}
			return true;
		}

		void line(String s) {
			synchronized (this.pending) {
				this.pending.append(s).append('\n');
			}
		}

		void flush() {
			String chunk;
			synchronized (this.pending) {
				if (this.pending.isEmpty()) {
					return;
				}
				chunk = this.pending.toString();
				this.pending.setLength(0);
			}
			try {
				this.writer.write(chunk);
				this.writer.flush();
			}
			catch (IOException e) {
				throw new IllegalStateException(e);
			}
		}

		@EventListener
		public void closed(ContextClosedEvent e) {
			// After the containers stopped (they stop before this event's listeners run last).
			this.flusher.shutdown();
			line("C " + this.calls.get());
			flush();
		}
	}

	@Component
	public static class Listener {

		private final Out out;

		private final boolean recordAll;

		public Listener(Out out, @Value("${bench.record:all}") String record) {
			this.out = out;
			this.recordAll = "all".equals(record);
		}

		@RetryableTopic(attempts = "${bench.attempts}",
				backOff = @BackOff(delayString = "${bench.delay}", multiplierString = "${bench.multiplier}"),
				numPartitions = "${bench.partitions}", replicationFactor = "1",
				exclude = PermanentFailure.class)
		@KafkaListener(id = "bench", topics = "${bench.topic}", groupId = "${bench.group}")
		public void listen(ConsumerRecord<String, String> rec) {
			Instant now = Instant.now();
			long startUs = now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000;
			this.out.calls.incrementAndGet();
			String payload = rec.value() == null ? "" : rec.value();
			int bar = payload.indexOf('|');
			String id = bar < 0 ? payload : payload.substring(0, bar);
			String behaviour = bar < 0 ? "ok" : payload.substring(bar + 1);
			int attempt = attempts(rec) - 1;
			String outcome;
			if (behaviour.startsWith("t") && attempt < Integer.parseInt(behaviour.substring(1))) {
				outcome = "transient";
			}
			else if (behaviour.equals("p")) {
				outcome = "permanent";
			}
			else {
				outcome = "success";
			}
			if (this.recordAll) {
				this.out.line("A " + id + " " + attempt + " " + rec.topic() + " " + rec.partition() + " " + startUs + " "
						+ due(rec) + " " + outcome);
			}
			switch (outcome) {
				case "transient" -> throw new TransientFailure("bench: transient " + id);
				case "permanent" -> throw new PermanentFailure("bench: permanent " + id);
				default -> {
				}
			}
		}

		@DltHandler
		public void dlt(ConsumerRecord<String, String> rec) {
			String payload = rec.value() == null ? "" : rec.value();
			int bar = payload.indexOf('|');
			this.out.line("D " + (bar < 0 ? payload : payload.substring(0, bar)));
		}

		/** Spring's attempt number (1 on the main topic): a 4-byte big-endian int header. */
		private static int attempts(ConsumerRecord<?, ?> rec) {
			Header h = rec.headers().lastHeader(RetryTopicHeaders.DEFAULT_HEADER_ATTEMPTS);
			if (h == null || h.value() == null || h.value().length != Integer.BYTES) {
				return 1;
			}
			return ByteBuffer.wrap(h.value()).getInt();
		}

		/** The back-off due time in epoch µs (the header holds epoch ms, big-endian), or -1. */
		private static long due(ConsumerRecord<?, ?> rec) {
			Header h = rec.headers().lastHeader(RetryTopicHeaders.DEFAULT_HEADER_BACKOFF_TIMESTAMP);
			if (h == null || h.value() == null || h.value().length == 0 || h.value().length > Long.BYTES) {
				return -1;
			}
			return new java.math.BigInteger(h.value()).longValue() * 1_000L;
		}
	}
}
