"""The CDK stacks of one stage; stacks.stage groups them."""
