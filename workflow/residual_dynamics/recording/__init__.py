"""Recording the residual stream: the hook table per architecture and extraction into stores."""
