/* Test helper: stands in for journald's native socket, so that the worker's
 * journal fields can be read back without a running systemd. Binds a
 * datagram socket at PATH and prints each entry it receives as NAME=value
 * lines followed by a blank line, until an entry holds MARK or SECONDS
 * pass. Exits 0 when MARK was seen, 1 otherwise.
 *   journal-capture PATH MARK SECONDS */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Prints one datagram of the native protocol: "NAME=value\n" fields, or
 * "NAME\n" + 64-bit little-endian length + bytes + "\n" for binary ones. */
static void print_entry(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		const char *nl = memchr(p + i, '\n', n - i);
		if (!nl)
			break;
		size_t line = (size_t)(nl - (p + i));
		if (memchr(p + i, '=', line)) {
			printf("%.*s\n", (int)line, p + i);
			i += line + 1;
			continue;
		}
		i += line + 1;
		if (n - i < 8)
			break;
		uint64_t len = 0;
		for (int k = 7; k >= 0; k--)
			len = len << 8 | (unsigned char)p[i + (size_t)k];
		i += 8;
		if (len > n - i)
			break;
		printf("%.*s=%.*s\n", (int)line, nl - line, (int)len, p + i);
		i += len + 1;
	}
	printf("\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: journal-capture PATH MARK SECONDS\n");
		return 2;
	}
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s", argv[1]);
	unlink(argv[1]);
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof un) < 0) {
		perror("journal-capture: bind");
		return 2;
	}
	time_t until = time(NULL) + atoi(argv[3]);
	static char buf[1 << 20];
	while (time(NULL) < until) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		print_entry(buf, (size_t)n);
		if (memmem(buf, (size_t)n, argv[2], strlen(argv[2])))
			return 0;
	}
	return 1;
}
