# On a cluster: what sbatch would refuse (a partition, an account, a size, a misspelt resource key) is
# refused in one line when the run starts, after the jobs to run are known and before the first is
# submitted (dvt.slurm). A refusal that comes later anyway deletes nothing: both profiles set
# keep-incomplete. Locally this does nothing.
from dvt.slurm import check_before_submitting


onstart:
    check_before_submitting(workflow)
