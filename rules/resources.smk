# What each job asks the scheduler for (workflow_scripts/resources.py sizes it): memory from the
# model's reference size, estimated once per model before anything is made; a speed job asks for
# its tier's hardware.
from workflow_scripts.resources import job_mem_mb, reference_mb, tier_request


@functools.cache
def model_mb(model):
    return reference_mb(MODELS[model].source["type"], source_files(model))


def mem_mb(factor, floor=1000):
    """A resources function: memory for a job as a multiple of the model's reference size."""

    @per_job
    def from_model(wildcards):
        return job_mem_mb(factor, floor, model_mb(wildcards.model))

    return from_model


def tier_resource(key):
    """A resources function: one of the tier's requests (workflow_scripts.resources.tier_request)."""

    @per_job
    def resource(wildcards):
        return tier_request(PLAN.tiers[wildcards.tier], key)

    return resource
