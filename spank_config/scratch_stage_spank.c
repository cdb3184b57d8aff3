/*
 * scratch_stage_spank.c: SPANK plugin adding `--datasets=a,b` to sbatch, srun and salloc.
 *
 * The option is the same request as the job comment token `datasets:a,b`:
 *
 *   - in the client (sbatch/salloc: allocator context, srun: local context) its callback
 *     checks the value: a non-empty comma-separated list of dataset names, each matching
 *     [A-Za-z0-9][A-Za-z0-9._+-]{0,127}. A bad value makes the command fail before
 *     anything is submitted, with one clear line on stderr;
 *   - slurm_spank_init_post_opt() (client side, after every option was processed, before
 *     the job is submitted) calls spank_job_control_setenv("DATASETS", value): Slurm puts
 *     it in the job's "job control" environment, which reaches Prolog, Epilog,
 *     PrologSlurmctld and EpilogSlurmctld as SPANK_DATASETS and job_submit.lua as the
 *     string "DATASETS=..." in job_desc.spank_job_env.
 *
 * Whether the name is known or permitted is not checked here (the client has no catalog):
 * job_submit.lua does that in slurmctld, the prolog checks again on the node.
 *
 * The option is registered with spank_option_register() in slurm_spank_init() in every
 * context: that is the only way to get it into sbatch/salloc (the static spank_options
 * table is ignored in allocator context), and slurmstepd (remote context) must know the
 * option too or srun's forwarded option is not recognised on the node.
 *
 * Arguments (after the plugin in plugstack.conf): `mountdir=PATH`, the directory the
 * datasets appear in on the nodes (scratch-stage's `mountdir`), shown in the option's
 * help text; default /datasets. A bad argument is reported and the default kept: the
 * plugin never fails to load because of its arguments.
 *
 * API facts: /usr/include/slurm/spank.h and spank(7) of Slurm 22.05.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/spank.h>

SPANK_PLUGIN(scratch_stage, 1);

#define NAME_MAX_LEN 128     /* [A-Za-z0-9][A-Za-z0-9._+-]{0,127} */
#define VALUE_MAX_LEN 8192   /* a sane bound for the whole list */
#define MOUNTDIR_MAX_LEN 512
#define DEFAULT_MOUNTDIR "/datasets"
#define MOUNTDIR_ARG "mountdir="

static const char usage_msg[] =
	"scratch-stage: --datasets needs a comma-separated list of dataset names";

#define HELP_FORMAT \
	"Datasets the job reads (comma-separated names); scratch-stage makes each one " \
	"available at %.*s/<name> on the job's nodes. Same as the job comment token " \
	"datasets:name,... (both together request the union)."

/* The help text, with the mount directory from plugstack.conf. */
static char help_text[sizeof(HELP_FORMAT) + MOUNTDIR_MAX_LEN];

/* The last valid value given (options may be given several times: env, script, CLI). */
static char *datasets_value = NULL;

static int datasets_cb(int val, const char *optarg, int remote);

static struct spank_option datasets_option = {
	"datasets",
	"name[,name...]",
	help_text,
	1,
	0,
	datasets_cb,
};

static int is_alnum(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_name_char(char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '+' || c == '-';
}

/*
 * 0 when VALUE is a non-empty comma-separated list of valid dataset names; otherwise -1,
 * with a short reason in WHY.
 */
static int check_value(const char *value, const char **why)
{
	size_t len, start = 0, i;

	if (value == NULL || value[0] == '\0') {
		*why = "the list is empty";
		return -1;
	}
	len = strlen(value);
	if (len > VALUE_MAX_LEN) {
		*why = "the list is too long";
		return -1;
	}
	for (i = 0; i <= len; i++) {
		char c = value[i];

		if (c == ',' || c == '\0') {
			size_t n = i - start;

			if (n == 0) {
				*why = "an empty name (two commas, or a comma at an end)";
				return -1;
			}
			if (n > NAME_MAX_LEN) {
				*why = "a name longer than 128 characters";
				return -1;
			}
			if (!is_alnum(value[start])) {
				*why = "a name must start with a letter or a digit";
				return -1;
			}
			start = i + 1;
		} else if (!is_name_char(c)) {
			*why = "names may only contain letters, digits, '.', '_', '+' and '-'";
			return -1;
		}
	}
	return 0;
}

static int datasets_cb(int val, const char *optarg, int remote)
{
	const char *why = NULL;
	char *copy;

	(void) val;
	if (remote) {
		/* slurmstepd: the client checked the value already; nothing to do here. */
		return 0;
	}
	if (check_value(optarg, &why) != 0) {
		slurm_error("%s (%s)", usage_msg, why);
		return ESPANK_BAD_ARG;
	}
	copy = strdup(optarg);
	if (copy == NULL) {
		slurm_error("scratch-stage: out of memory");
		return ESPANK_ERROR;
	}
	free(datasets_value);
	datasets_value = copy;
	return 0;
}

/* 0 when PATH is an absolute, printable directory path of a sane length, else -1. */
static int check_mountdir(const char *path)
{
	size_t len = strlen(path), i;

	if (len < 1 || len >= MOUNTDIR_MAX_LEN || path[0] != '/')
		return -1;
	for (i = 0; i < len; i++)
		if (path[i] <= ' ' || path[i] == 0x7f || path[i] == '%')
			return -1;
	return 0;
}

/* The help text, from the plugstack.conf arguments AV (mountdir=PATH). */
static void set_help_text(int ac, char **av)
{
	const char *mountdir = DEFAULT_MOUNTDIR;
	size_t prefix = strlen(MOUNTDIR_ARG), len;
	int i;

	for (i = 0; i < ac; i++) {
		if (strncmp(av[i], MOUNTDIR_ARG, prefix) == 0 &&
		    check_mountdir(av[i] + prefix) == 0) {
			mountdir = av[i] + prefix;
		} else {
			slurm_error("scratch-stage: plugstack.conf: ignoring argument '%.80s' "
				    "(known: mountdir=/absolute/path)", av[i]);
		}
	}
	len = strlen(mountdir);
	if (len > 0 && mountdir[len - 1] == '/')
		len--;
	snprintf(help_text, sizeof(help_text), HELP_FORMAT, (int) len, mountdir);
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	spank_err_t rc;

	/* slurmd itself and the prolog/epilog context have no user options to parse. */
	if (ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR && ctx != S_CTX_REMOTE)
		return 0;
	set_help_text(ac, av);
	rc = spank_option_register(sp, &datasets_option);
	if (rc != ESPANK_SUCCESS) {
		slurm_error("scratch-stage: cannot register --datasets: %s", spank_strerror(rc));
		return -1;
	}
	return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	spank_err_t rc;

	(void) ac;
	(void) av;
	/*
	 * Only the submitting client can set the job control environment, and only before
	 * the job is submitted: sbatch/salloc (allocator) and srun (local). In srun inside
	 * an existing allocation the prolog has already run; setting it is harmless.
	 */
	if (datasets_value == NULL || (ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR))
		return 0;
	rc = spank_job_control_setenv(sp, "DATASETS", datasets_value, 1);
	if (rc != ESPANK_SUCCESS) {
		slurm_error("scratch-stage: cannot pass --datasets to the job: %s",
			    spank_strerror(rc));
		return -1;
	}
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	(void) sp;
	(void) ac;
	(void) av;
	free(datasets_value);
	datasets_value = NULL;
	return 0;
}
