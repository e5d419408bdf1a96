#!/usr/bin/env bash
# Builds the Spring Kafka peer of the benchmark (benches/rebound/spring.rs) with Maven, unless its
# jar is newer than every source; prints the jar's path. Needs Java 17+ and Maven (mvn); uses the
# Maven local repository (~/.m2) like any Maven build.
set -euo pipefail
cd "$(dirname "$0")"
jar=target/spring-retry-peer.jar
if [ -f "$jar" ] && [ -z "$(find pom.xml src -newer "$jar" -print -quit)" ]; then
  echo "$PWD/$jar"
  exit 0
fi
echo "==> building the Spring Kafka peer (mvn package; the first time resolves Spring Boot from Maven Central)" >&2
mvn -B -q package -DskipTests >&2
echo "$PWD/$jar"
